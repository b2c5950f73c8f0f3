//! Tier 1: the reference model on hand-written frames, one or more for every rule and reason.

use lockd_common::{
    Reason,
    model::{verdict_from_vm, verdict_to_vm},
    policy::{EffectiveMode, VifPolicy},
};
use lockd_tests::{
    Case,
    corpus::{cases, to_vm_cases},
    hex,
};

#[test]
fn every_case_gets_its_reason() {
    assert_cases(&cases(), verdict_from_vm);
}

/// Every case's reason from `verdict`; all mismatches are listed in one failure.
fn assert_cases(cs: &[Case], verdict: fn(&VifPolicy, &[u8]) -> Reason) {
    let failures: Vec<String> = cs
        .iter()
        .filter_map(|c| {
            let got = verdict(&c.policy, &c.frame);
            (got != c.expect).then(|| {
                format!(
                    "{}: expected {}, model says {} (frame {})",
                    c.name,
                    c.expect.name(),
                    got.name(),
                    hex(&c.frame)
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_from_vm_reason_is_covered() {
    let cs = cases();
    for r in Reason::ALL {
        if matches!(
            r,
            Reason::RxForeignMac | Reason::RxForeignIp | Reason::Ratelimit
        ) {
            continue; // to-VM and rate-limit reasons belong to the TC program and the limiter.
        }
        assert!(cs.iter().any(|c| c.expect == r), "no case for {}", r.name());
    }
    let mut names: Vec<_> = cs.iter().map(|c| c.name).collect();
    names.dedup();
    assert_eq!(names.len(), cs.len(), "case names must be unique");
}

/// Cutting a well-formed passing frame anywhere inside its headers must give `malformed`
/// (its source MAC is the guest's, so nothing earlier can decide).
#[test]
fn truncation_at_every_offset_is_malformed() {
    let mut checked = 0;
    for c in cases() {
        if c.expect != Reason::Pass || c.policy.mode != EffectiveMode::Locked {
            continue;
        }
        for cut in 0..c.frame.len() {
            let got = verdict_from_vm(&c.policy, &c.frame[..cut]);
            assert_eq!(
                got,
                Reason::Malformed,
                "{} cut to {cut} bytes: {}",
                c.name,
                hex(&c.frame[..cut])
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} truncations checked");
}

#[test]
fn garbage_never_panics() {
    let (mut rng, _) = lockd_tests::seeded_rng("garbage_never_panics");
    let corpus = cases();
    for _ in 0..20_000 {
        let p = lockd_tests::random::policy(&mut rng);
        let f = lockd_tests::random::frame(&mut rng, &corpus);
        let _verdict = verdict_from_vm(&p, &f);
    }
}

#[test]
fn every_to_vm_case_gets_its_reason() {
    let cs = to_vm_cases();
    assert_cases(&cs, verdict_to_vm);
    for r in [
        Reason::Pass,
        Reason::Disabled,
        Reason::RxForeignMac,
        Reason::RxForeignIp,
        Reason::Malformed,
    ] {
        assert!(
            cs.iter().any(|c| c.expect == r),
            "no to-VM case for {}",
            r.name()
        );
    }
}

/// The README's reason table is the one declaration in lockd-common, row for row.
#[test]
fn readme_lists_every_reason_as_declared() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter(|l| {
            Reason::ALL
                .iter()
                .any(|r| l.starts_with(&format!("| `{}` |", r.name())))
        })
        .collect();
    let want: Vec<String> = Reason::ALL
        .iter()
        .map(|r| format!("| `{}` | {} |", r.name(), r.description()))
        .collect();
    assert_eq!(
        rows, want,
        "README's drop-reason table differs from lockd_common::Reason"
    );
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md")
}

/// Every kernel feature lockd declares has its row in the README's kernel table, with the
/// version that brought it; "cannot run" there exactly when lockd has no fallback.
#[test]
fn readme_kernel_table_is_the_feature_declaration() {
    let readme = readme();
    let rows: Vec<Vec<&str>> = readme
        .split("## Kernels")
        .nth(1)
        .expect("a Kernels section")
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| kernel feature") && !l.starts_with("|---"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let mut wrong = Vec::new();
    for f in lockd::features::Feature::ALL {
        let Some(row) = rows.iter().find(|r| r[0].starts_with(f.readme_row())) else {
            wrong.push(format!("{}: no row starting {:?}", f.key(), f.readme_row()));
            continue;
        };
        let (major, minor) = f.since();
        // "4.8; 4.19": the first version is the feature's own.
        if row[1].split(';').next().map(str::trim) != Some(format!("{major}.{minor}").as_str()) {
            wrong.push(format!("{}: README says since {}, the code {major}.{minor}", f.key(), row[1]));
        }
        if row[3].starts_with("cannot run") != f.fallback().is_none() {
            wrong.push(format!("{}: README says '{}', the code's fallback is {:?}", f.key(), row[3], f.fallback()));
        }
    }
    assert!(wrong.is_empty(), "README's kernel table and lockd::features differ:\n  {}", wrong.join("\n  "));
}

/// The README names the pinned layout the code writes.
#[test]
fn readme_names_the_pinned_layout() {
    let path = format!("{}/v{}/", lockd::dataplane::DEFAULT_PIN_DIR, lockd::dataplane::LAYOUT_VERSION);
    assert!(readme().contains(&format!("`{path}`")), "README does not name the layout {path}");
}
