//! The top-level modules of the node and of the data plane depend on each other in one
//! direction only (ARCHITECTURE.md, "Dependencies between modules point one way"). This
//! reads every `crate::module` path in each module's source, crate by crate, and fails on a
//! cycle, naming it. (Between the two crates the compiler holds the direction: the data
//! plane cannot name the node.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(path: &Path, out: &mut String) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(&std::fs::read_to_string(path).unwrap());
    }
}

/// Each top-level module of the crate in `dir` and the other top-level modules it names.
fn graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut text = String::new();
        sources(&path, &mut text);
        let uses: BTreeSet<String> = text
            .split("crate::")
            .skip(1)
            .map(|rest| rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>())
            .filter(|m| !m.is_empty() && *m != name)
            .collect();
        graph.insert(name, uses);
    }
    graph
}

fn find_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if graph.contains_key(next)
            && let Some(cycle) = find_cycle(graph, next, path, done)
        {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn top_level_modules_have_no_cycles() {
    for (dir, known) in [(".", "cluster"), ("../dataplane", "pipeline")] {
        let graph = graph(dir);
        assert!(graph.contains_key(known), "{dir}: {graph:?}");
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(cycle) = find_cycle(&graph, node, &mut Vec::new(), &mut done) {
                panic!("module cycle in {dir}: {}", cycle.join(" → "));
            }
        }
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let edge = |a: &str, b: &str| (a.to_string(), BTreeSet::from([b.to_string()]));
    let graph = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    let cycle = find_cycle(&graph, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(cycle.unwrap(), ["a", "b", "c", "a"]);
}
