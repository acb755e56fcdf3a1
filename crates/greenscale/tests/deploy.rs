//! The Kubernetes deployment, checked offline: every Kustomize overlay rendered with
//! `kubectl kustomize` and validated against the Kubernetes schemas, the ScaledObjects'
//! fields, safety settings, the Dockerfile linted, the compose file read.

use std::process::Command;

#[test]
fn every_overlay_renders_validates_and_keeps_its_promises() {
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    assert!(
        kubectl.is_ok_and(|o| o.status.success()),
        "kubectl is needed to render the Kustomize overlays (kubectl kustomize)"
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/deploy_check.py");
    let out = Command::new(greenscale_testkit::python())
        .arg(script)
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
