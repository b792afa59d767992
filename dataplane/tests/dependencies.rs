//! The data plane serves traffic without Raft, node-to-node RPC or storage (ARCHITECTURE.md):
//! none of those crates may enter its dependencies, directly or through another crate. This
//! reads the workspace's `Cargo.lock`, follows the data plane's dependencies (dev ones
//! included, which only makes the check stricter) and fails naming the path to any of them.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// What the data plane must never depend on.
const FORBIDDEN: &[&str] = &["openraft", "sled", "tonic", "meridian-consensus", "meridian-proto", "meridian-node"];

/// Each locked package's name and the names of the packages it depends on.
fn locked_packages(lock: &str) -> BTreeMap<String, Vec<String>> {
    let mut packages = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut dependencies = Vec::new();
        let mut in_dependencies = false;
        for line in block.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("name = ") {
                name = Some(value.trim_matches('"').to_string());
            } else if line.starts_with("dependencies = [") {
                in_dependencies = true;
            } else if in_dependencies && line == "]" {
                in_dependencies = false;
            } else if in_dependencies {
                // `"name"` or `"name version"` (when two versions are locked).
                let entry = line.trim_end_matches(',').trim_matches('"');
                dependencies.push(entry.split(' ').next().unwrap_or(entry).to_string());
            }
        }
        if let Some(name) = name {
            packages.entry(name).or_insert_with(Vec::new).extend(dependencies);
        }
    }
    packages
}

/// The chain of packages from `root` to the first forbidden one it reaches, if any.
fn path_to_forbidden(packages: &BTreeMap<String, Vec<String>>, root: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([root]);
    while let Some(package) = queue.pop_front() {
        if FORBIDDEN.contains(&package) {
            let mut path = vec![package.to_string()];
            let mut at = package;
            while let Some(previous) = came_from.get(at) {
                path.push(previous.to_string());
                at = previous;
            }
            path.reverse();
            return Some(path);
        }
        for next in packages.get(package).into_iter().flatten() {
            if next != root && !came_from.contains_key(next.as_str()) {
                came_from.insert(next, package);
                queue.push_back(next);
            }
        }
    }
    None
}

#[test]
fn the_data_plane_depends_on_no_raft_rpc_or_storage_crate() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")).unwrap();
    let packages = locked_packages(&lock);
    assert!(packages.contains_key("meridian-dataplane") && packages.contains_key("openraft"), "{:?}", packages.keys());
    if let Some(path) = path_to_forbidden(&packages, "meridian-dataplane") {
        panic!("the data plane depends on {}", path.join(" → "));
    }
    assert!(
        path_to_forbidden(&packages, "meridian-node").is_some(),
        "the check finds what the node depends on (it would not fail on anything otherwise)"
    );
}
