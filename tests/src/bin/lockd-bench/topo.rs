//! The topology every live measurement runs in: a host namespace (optionally with a bridge and
//! a second port) and a VM namespace joined by a two-queue veth, and the wait until it carries
//! frames.

use std::time::Duration;

use lockd_kit::netlab::NetNs;
use serde_json::Value;

/// The guest's MAC in every topology of the bench.
pub const GUEST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const GUEST_STR: &str = "02:00:00:00:00:0b";

/// A host namespace (optionally with a bridge) and a VM namespace joined by a two-queue veth.
pub struct Topo {
    pub host: NetNs,
    pub vm: NetNs,
    pub host_ifx: u32,
    pub vm_ifx: u32,
}

pub fn topo(bridge: bool) -> Topo {
    let host = NetNs::new("bh").expect("ns");
    let vm = NetNs::new("bv").expect("ns");
    host.exec(&[
        "ip",
        "link",
        "add",
        "vif0",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        vm.name(),
    ])
    .expect("veth");
    vm.exec(&["ip", "link", "set", "eth0", "address", GUEST_STR])
        .expect("mac");
    vm.exec(&["ip", "link", "set", "eth0", "up"]).expect("up");
    if bridge {
        host.exec(&["ip", "link", "add", "br0", "type", "bridge"])
            .expect("br");
        host.exec(&["ip", "link", "set", "br0", "up"])
            .expect("br up");
        host.exec(&["ip", "link", "set", "vif0", "master", "br0"])
            .expect("port");
        // A second port, so the bridge has somewhere to forward (and run FORWARD rules).
        host.exec(&[
            "ip", "link", "add", "sink0", "type", "veth", "peer", "name", "sink1",
        ])
        .expect("sink");
        host.exec(&["ip", "link", "set", "sink0", "master", "br0"])
            .expect("sink port");
        for d in ["sink0", "sink1"] {
            host.exec(&["ip", "link", "set", d, "up"]).expect("sink up");
        }
    }
    host.exec(&["ip", "link", "set", "vif0", "up"])
        .expect("vif up");
    let host_ifx = host.ifindex("vif0").expect("ifindex");
    let vm_ifx = vm.ifindex("eth0").expect("ifindex");
    Topo {
        host,
        vm,
        host_ifx,
        vm_ifx,
    }
}

/// How long a new topology may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until vif0's carrier is up (the kernel's link watcher reports a veth's carrier up to a
/// second after `ip link set up`) and, on a bridge, until the bridge forwards on vif0 and on its
/// sink port: a port stays `disabled` until the carrier event arrives, and the bridge drops
/// what arrives on a disabled port before its prerouting or FORWARD hooks see it. Errs with
/// the state last seen.
pub fn wait_ready(t: &Topo, bridge: bool) -> Result<(), String> {
    let start = std::time::Instant::now();
    let state = || -> Result<(), String> {
        let link: Value = t
            .host
            .exec(&["ip", "-j", "link", "show", "dev", "vif0"])
            .ok()
            .and_then(|o| serde_json::from_str(&o).ok())
            .ok_or("ip -j link show vif0 failed")?;
        let oper = link[0]["operstate"].as_str().unwrap_or("?");
        if oper != "UP" {
            return Err(format!("vif0's operstate is {oper}"));
        }
        if bridge {
            for dev in ["vif0", "sink0"] {
                let port: Value = t
                    .host
                    .exec(&["bridge", "-j", "link", "show", "dev", dev])
                    .ok()
                    .and_then(|o| serde_json::from_str(&o).ok())
                    .ok_or("bridge -j link show failed")?;
                let st = port[0]["state"].as_str().unwrap_or("?");
                if st != "forwarding" {
                    return Err(format!("bridge port {dev} is {st}"));
                }
            }
        }
        Ok(())
    };
    loop {
        match state() {
            Ok(()) => return Ok(()),
            Err(why) if start.elapsed() > READY_TIMEOUT => {
                return Err(format!(
                    "{why} {} s after the topology was made",
                    READY_TIMEOUT.as_secs()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
