//! The daemon's CLI: every verb round-trips, `--json` parses back, and every error path names
//! the offending item and leaves the state file byte-identical.

use lockd_kit::netlab::NetNs;
use lockd_tests::daemon::Instance;

const NET_UUID: &str = "0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b02";
const VIF_UUID: &str = "6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01";
const VM_UUID: &str = "a1b2c3d4-0000-4000-8000-000000000003";

#[test]
fn every_verb_round_trips() {
    let ns = NetNs::new("ch").expect("ns");
    let mut d = Instance::new(&ns);
    let before = d.cli(&["network-list"]);
    assert_ne!(before.code, 0);
    assert!(before.stderr.contains("not running"), "{}", before.stderr);
    assert!(before.stderr.contains("lockd daemon"), "{}", before.stderr);
    d.start();

    // Networks.
    let auto = d.cli(&["network-create", "name-label=auto"]).ok();
    assert_eq!(auto.len(), 36, "uuid printed: {auto}");
    let n = d
        .cli(&[
            "network-create",
            "name-label=xenbr0",
            &format!("uuid={NET_UUID}"),
            "default-locking-mode=disabled",
        ])
        .ok();
    assert_eq!(n, NET_UUID);
    let get = |p: &str| {
        d.cli(&[
            "network-param-get",
            &format!("uuid={NET_UUID}"),
            &format!("param-name={p}"),
        ])
        .ok()
    };
    assert_eq!(get("default-locking-mode"), "disabled");
    d.cli(&[
        "network-param-set",
        &format!("uuid={NET_UUID}"),
        "default-locking-mode=unlocked",
    ])
    .ok();
    assert_eq!(get("default-locking-mode"), "unlocked");
    let nets = d.cli(&["network-list", "--json"]).json();
    assert_eq!(nets.as_array().map(Vec::len), Some(2), "{nets}");
    d.cli(&["network-destroy", &format!("uuid={auto}")]).ok();
    assert!(d.cli(&["network-list"]).ok().contains("xenbr0"));

    // VIFs.
    let v = d
        .cli(&[
            "vif-create",
            &format!("network-uuid={NET_UUID}"),
            "device=vif3.0",
            "mac=02:00:00:00:00:0B",
            &format!("uuid={VIF_UUID}"),
            &format!("vm-uuid={VM_UUID}"),
        ])
        .ok();
    assert_eq!(v, VIF_UUID);
    let u = format!("uuid={VIF_UUID}");
    d.cli(&[
        "vif-param-set",
        &u,
        "locking-mode=locked",
        "ipv4-allowed=10.0.0.2, 10.0.1.0/24",
        "ipv6_allowed=2001:db8::2",
        "qos_algorithm_type=ratelimit",
        "qos_algorithm_params:kbps=1024",
        "qos_algorithm_params:timeslice_us=20000",
    ])
    .ok();
    d.cli(&["vif-param-add", &u, "ipv4-allowed=10.0.0.3,10.0.0.2"])
        .ok();
    d.cli(&["vif-param-remove", &u, "ipv6-allowed=2001:db8::99"])
        .ok();
    d.cli(&["vif-param-remove", &u, "ipv4_allowed=10.0.1.0/24"])
        .ok();
    let vget = |p: &str| {
        d.cli(&["vif-param-get", &u, &format!("param-name={p}")])
            .ok()
    };
    assert_eq!(vget("locking-mode"), "locked");
    assert_eq!(vget("ipv4-allowed"), "10.0.0.2; 10.0.0.3");
    assert_eq!(vget("ipv6-allowed"), "2001:db8::2");
    assert_eq!(vget("mac"), "02:00:00:00:00:0b");
    assert_eq!(vget("device"), "vif3.0");
    assert_eq!(vget("vm-uuid"), VM_UUID);
    assert_eq!(vget("network-uuid"), NET_UUID);
    assert_eq!(vget("qos_algorithm_type"), "ratelimit");
    assert_eq!(
        vget("qos_algorithm_params"),
        "kbps: 1024; timeslice_us: 20000"
    );
    d.cli(&["vif-param-set", &u, "locking-mode=network_default"])
        .ok();
    assert_eq!(vget("effective-locking-mode"), "unlocked");
    d.cli(&[
        "network-param-set",
        &format!("uuid={NET_UUID}"),
        "default-locking-mode=disabled",
    ])
    .ok();
    assert_eq!(vget("effective-locking-mode"), "disabled");

    let list = d.cli(&["vif-list", "--json"]).json();
    let row = &list[0];
    assert_eq!(row["uuid"], VIF_UUID);
    assert_eq!(row["device"], "vif3.0");
    assert_eq!(row["attach"], "absent"); // no such netdev yet
    assert_eq!(row["ifindex"], serde_json::Value::Null);
    assert_eq!(row["effective_locking_mode"], "disabled");
    assert_eq!(
        row["ipv4_allowed"],
        serde_json::json!(["10.0.0.2", "10.0.0.3"])
    );
    assert_eq!(row["qos_algorithm_params"]["kbps"], 1024);
    let stats = d.cli(&["vif-stats", "--json"]).json();
    assert_eq!(stats[0]["counters"]["from_vm"]["pass"]["packets"], 0);
    assert!(d.cli(&["vif-stats"]).ok().starts_with("vif"));

    // Clearing a list and the QoS.
    d.cli(&["vif-param-set", &u, "ipv6-allowed=", "qos_algorithm_type="])
        .ok();
    assert_eq!(vget("ipv6-allowed"), "");
    assert_eq!(vget("qos_algorithm_type"), "");

    // The state survives a restart byte for byte.
    let saved = d.state_bytes();
    d.stop(libc::SIGTERM);
    d.start();
    assert_eq!(
        d.cli(&["vif-list", "--json"]).json()[0]["ipv4_allowed"],
        serde_json::json!(["10.0.0.2", "10.0.0.3"])
    );
    assert_eq!(d.state_bytes(), saved);

    d.cli(&["vif-destroy", &u]).ok();
    d.cli(&["network-destroy", &format!("uuid={NET_UUID}")])
        .ok();
    assert_eq!(d.cli(&["vif-list", "--json"]).json(), serde_json::json!([]));
}

#[test]
fn errors_name_the_item_and_change_nothing() {
    let ns = NetNs::new("ce").expect("ns");
    let mut d = Instance::new(&ns);
    d.start();
    d.cli(&[
        "network-create",
        "name-label=n",
        &format!("uuid={NET_UUID}"),
    ])
    .ok();
    d.cli(&[
        "vif-create",
        &format!("network-uuid={NET_UUID}"),
        "device=vif1.0",
        "mac=02:00:00:00:00:01",
        &format!("uuid={VIF_UUID}"),
    ])
    .ok();
    let u = format!("uuid={VIF_UUID}");
    d.cli(&[
        "vif-param-set",
        &u,
        "locking-mode=locked",
        "ipv4-allowed=10.0.0.1",
    ])
    .ok();
    let missing = "uuid=11111111-2222-4333-8444-555555555555";
    let nu = format!("uuid={NET_UUID}");
    let nnu = format!("network-uuid={NET_UUID}");
    let missing_net = missing.replace("uuid", "network-uuid");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "vif-param-set",
                &u,
                "locking-mode=unlocked",
                "ipv4-allowed=10.0.0.1,10.0.0.300",
            ],
            "10.0.0.300",
        ),
        (
            vec!["vif-param-set", &u, "ipv4-allowed=10.0.0.0/8,224.1.2.3"],
            "224.1.2.3",
        ),
        (
            vec!["vif-param-set", &u, "ipv6-allowed=10.0.0.1"],
            "10.0.0.1",
        ),
        (
            vec!["vif-param-set", &u, "locking-mode=sideways"],
            "sideways",
        ),
        (vec!["vif-param-set", &u, "frobnicate=1"], "frobnicate"),
        (
            vec!["vif-param-set", &u, "qos_algorithm_params:kbps=-5"],
            "-5",
        ),
        (
            vec!["vif-param-set", &u, "qos_algorithm_type=shaper"],
            "shaper",
        ),
        (
            vec![
                "vif-param-set",
                &u,
                "locking-mode=locked",
                "locking-mode=unlocked",
            ],
            "locking-mode",
        ),
        (vec!["vif-param-set", &u], "at least one"),
        (
            vec!["vif-param-set", missing, "locking-mode=locked"],
            "11111111-2222-4333-8444-555555555555",
        ),
        (
            vec!["vif-param-set", "uuid=nope", "locking-mode=locked"],
            "nope",
        ),
        (vec!["vif-param-add", &u, "ipv4-allowed=bogus"], "bogus"),
        (
            vec!["vif-param-remove", missing, "ipv4-allowed=10.0.0.1"],
            "11111111",
        ),
        (vec!["vif-param-get", &u, "param-name=colour"], "colour"),
        (vec!["vif-destroy", missing], "11111111"),
        (
            vec!["vif-create", &nnu, "device=vif1.0", "mac=02:00:00:00:00:02"],
            "vif1.0",
        ),
        (
            vec!["vif-create", &nnu, "device=vif2.0", "mac=02:00:00:00:00"],
            "02:00:00:00:00",
        ),
        (
            vec![
                "vif-create",
                &missing_net,
                "device=vif2.0",
                "mac=02:00:00:00:00:02",
            ],
            "11111111",
        ),
        (vec!["network-create", "name-label=dup", &nu], NET_UUID),
        (vec!["network-create"], "name-label"),
        (vec!["network-destroy", &nu], "destroy them first"),
        (
            vec!["network-param-set", &nu, "default-locking-mode=locked"],
            "locked",
        ),
        (vec!["network-param-get", &nu, "param-name=mtu"], "mtu"),
        (vec!["vif-stats", missing], "11111111"),
        (vec!["vif-list", "garbage"], "garbage"),
    ];
    // Panics if the store cannot be read: the comparisons below are never of two empties.
    let before = d.state_bytes();
    for (args, needle) in cases {
        let out = d.cli(&args);
        assert_ne!(out.code, 0, "{args:?} should fail");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: error does not name '{needle}': {}",
            out.stderr
        );
        assert_eq!(d.state_bytes(), before, "{args:?} changed the state");
    }
    assert_eq!(
        d.cli(&["vif-param-get", &u, "param-name=ipv4-allowed"])
            .ok(),
        "10.0.0.1"
    );
    assert_eq!(
        d.cli(&["vif-param-get", &u, "param-name=locking-mode"])
            .ok(),
        "locked"
    );
    // An unknown verb is refused by the client itself.
    let out = d.cli(&["vif-frob", &u]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("vif-frob"), "{}", out.stderr);
}

#[test]
fn corrupt_state_stops_the_daemon_and_is_kept() {
    let ns = NetNs::new("cc").expect("ns");
    let d = Instance::new(&ns);
    std::fs::create_dir_all(&d.state_dir).expect("state dir");
    let path = d.state_dir.join("state.json");
    std::fs::write(&path, b"{\"version\": 1, \"networks\": ").expect("write");
    let err = d.start_failing();
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("state.json"), "{err}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"{\"version\": 1, \"networks\": "
    );
}

/// On a kernel that lacks a required feature the daemon stops before loading anything, with
/// one line naming the feature (an older kernel is played by `LOCKD_FEATURES_MISSING`).
#[test]
fn a_kernel_without_a_required_feature_gets_one_line() {
    let dir = std::env::temp_dir().join(format!("lockd-features-{}", std::process::id()));
    let bpffs = dir.join("bpffs");
    let out = std::process::Command::new(lockd_tests::daemon::lockd_bin())
        .arg("daemon")
        .env("LOCKD_FEATURES_MISSING", "mmapable_array")
        .env("LOCKD_STATE_DIR", dir.join("state"))
        .env("LOCKD_SOCKET", dir.join("s.sock"))
        .env("LOCKD_BPFFS", &bpffs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("lockd daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("BPF_F_MMAPABLE") && lines[0].contains("Linux 5.5+"),
        "{stderr}"
    );
    assert!(!bpffs.exists(), "nothing is pinned before the check");
    let _ = std::fs::remove_dir_all(&dir);
    // A feature with a fallback is logged, and the table says which.
    let out = std::process::Command::new(lockd_tests::daemon::lockd_bin())
        .arg("features")
        .env("LOCKD_FEATURES_MISSING", "tcx")
        .output()
        .expect("lockd features");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tcx") && l.contains("clsact")),
        "{table}"
    );
}

/// A panic in the daemon's core ends the process (systemd restarts it; enforcement stays
/// pinned) instead of leaving a daemon that answers nothing but errors.
#[test]
fn a_panic_ends_the_daemon() {
    let ns = NetNs::new("cp").expect("ns");
    let mut d = Instance::new(&ns);
    d.env
        .push(("LOCKD_FAULT".into(), "panic-on-network-create".into()));
    d.start();
    let _ = d.cli(&["network-create", "name-label=x"]);
    let status = d
        .exited(std::time::Duration::from_secs(10))
        .expect("the daemon must exit after a panic");
    assert!(!status.success(), "{status}");
    assert!(d.log().contains("panicked"), "{}", d.log());
}

/// POLICY.md v2 values: host bits stored as the network with a note; unspecified, multicast
/// and broadcast items and non-unicast MACs refused naming the item, nothing changed.
#[test]
fn v2_values_are_held_at_the_cli() {
    let ns = NetNs::new("cv").expect("ns");
    let mut d = Instance::new(&ns);
    d.start();
    let net = d.cli(&["network-create", "name-label=v"]).ok();
    let vif = d
        .cli(&[
            "vif-create",
            &format!("network-uuid={net}"),
            "device=vifv",
            "mac=02:00:00:00:00:0b",
        ])
        .ok();
    let set = d.cli(&[
        "vif-param-set",
        &format!("uuid={vif}"),
        "locking-mode=locked",
        "ipv4-allowed=10.0.0.5/24,10.0.1.2",
    ]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert!(
        set.stderr
            .contains("'10.0.0.5/24' has host bits set: stored as 10.0.0.0/24"),
        "{}",
        set.stderr
    );
    let got = d
        .cli(&[
            "vif-param-get",
            &format!("uuid={vif}"),
            "param-name=ipv4-allowed",
        ])
        .ok();
    assert_eq!(got, "10.0.0.0/24; 10.0.1.2");
    let before = d.cli(&["vif-list", "--json"]).ok();
    for (arg, item) in [
        ("ipv4-allowed=10.0.0.2,0.0.0.0", "'0.0.0.0'"),
        ("ipv4-allowed=224.0.0.5", "'224.0.0.5'"),
        ("ipv4-allowed=255.255.255.255", "'255.255.255.255'"),
        ("ipv6-allowed=::", "'::'"),
        ("ipv6-allowed=ff02::1", "'ff02::1'"),
        (
            "qos_algorithm_params:kbps=18446744073709551615",
            "18446744073709551615",
        ),
        ("qos_algorithm_params:kbps=4294967296", "4294967296"),
    ] {
        let r = d.cli(&["vif-param-set", &format!("uuid={vif}"), arg]);
        assert_ne!(r.code, 0, "{arg} was accepted");
        assert!(r.stderr.contains(item), "{arg}: {}", r.stderr);
    }
    for mac in [
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "ff:ff:ff:ff:ff:ff",
    ] {
        let r = d.cli(&[
            "vif-create",
            &format!("network-uuid={net}"),
            "device=vifw",
            &format!("mac={mac}"),
        ]);
        assert_ne!(r.code, 0, "{mac} was accepted");
        assert!(
            r.stderr.contains(mac) && r.stderr.contains("unicast"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(
        d.cli(&["vif-list", "--json"]).ok(),
        before,
        "nothing changed"
    );
}
