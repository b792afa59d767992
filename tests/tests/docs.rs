//! Every shell example in README.md and docs/*.md runs, as written: the blocks of one file
//! run in order in one `bash -euo pipefail` session, in an empty folder (with the
//! repository's `deploy/` beside them), with the `meridian` under test first on the `PATH`.
//! Processes a block starts in the background are stopped when its file is done.
//!
//! A block that cannot run here says why in an HTML comment on the line before it
//! (`<!-- not run by the docs test: REASON -->`); every other block must run and succeed.
//! Examples drift from the code they describe; this is how they are kept honest.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SKIP: &str = "<!-- not run by the docs test:";
const PER_FILE: Duration = Duration::from_secs(180);

struct Block {
    line: usize,
    text: String,
    skipped: Option<String>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shell_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() == "```sh" {
            let skipped = i
                .checked_sub(1)
                .and_then(|p| lines[p].trim().strip_prefix(SKIP))
                .map(|reason| reason.trim_end_matches("-->").trim().to_string());
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim_end() != "```" {
                end += 1;
            }
            blocks.push(Block { line: i + 1, text: lines[start..end].join("\n"), skipped });
            i = end;
        }
        i += 1;
    }
    blocks
}

/// Runs `script` in `dir` in its own process group; stops the whole group afterwards.
fn run_session(script: &str, dir: &Path) -> (bool, String) {
    let binary = meridian_chaos::launcher::meridian_binary();
    let bin_dir = binary.parent().expect("the binary has a folder").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let log = dir.join("session.log");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let group = child.id() as i32;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > PER_FILE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: signals the process group this test created (bash and what it started).
    unsafe {
        libc::kill(-group, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(500));
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), output),
        None => (false, format!("{output}\n(timed out after {PER_FILE:?})")),
    }
}

#[test]
fn every_shell_example_in_the_docs_runs() {
    if !meridian_tests::tools(&["curl", "dig", "openssl"]) {
        return;
    }
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let (mut ran, mut skipped) = (0, 0);
    for file in files {
        let markdown = std::fs::read_to_string(&file).expect("readable doc");
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let blocks = shell_blocks(&markdown);
        let mut script = String::new();
        for block in &blocks {
            match &block.skipped {
                Some(reason) => {
                    assert!(!reason.is_empty(), "{name}:{}: a skipped block must say why", block.line);
                    skipped += 1;
                }
                None => {
                    script.push_str(&format!("echo '### {name}:{}'\n{}\n", block.line, block.text));
                    ran += 1;
                }
            }
        }
        if script.is_empty() {
            continue;
        }
        let dir = tempfile::Builder::new().prefix("meridian-docs-").tempdir().expect("temp dir");
        std::os::unix::fs::symlink(repo().join("deploy"), dir.path().join("deploy")).expect("symlink deploy/");
        let (ok, output) = run_session(&script, dir.path());
        assert!(ok, "an example in {name} failed (the last `###` line names its block):\n{output}");
    }
    assert!(ran >= 8, "only {ran} blocks ran");
    eprintln!("{ran} shell blocks ran, {skipped} are marked as not run");
}
