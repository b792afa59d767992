//! Starting real `meridian serve` processes and cleaning up after them.
//!
//! Each [`NodeProcess`] gets its own temporary folder holding its configuration, its
//! ready file and its logs (`stdout.log` carries the access log, `stderr.log` the node's
//! own log). The node binds port 0 wherever the configuration says so and reports the
//! bound addresses through `--ready-file`, so tests running in parallel never collide.
//! Dropping a `NodeProcess` kills the process (SIGKILL) and removes the folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why a node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the meridian binary is not at {0}: build it first (`cargo build --bin meridian`) or set MERIDIAN_BIN")]
    NoBinary(PathBuf),
    #[error("i/o error while starting a node: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node exited before it was ready ({status}); its log:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("the node was not ready within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
    #[error("the ready file is malformed: {0}")]
    BadReadyFile(String),
}

static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`meridian_binary`] return `path` (`meridian chaos` passes its own executable).
pub fn use_binary(path: PathBuf) {
    let _ = BINARY.set(path);
}

/// The `meridian` binary to run: the one set by [`use_binary`], else `$MERIDIAN_BIN`, else
/// the workspace's debug build.
pub fn meridian_binary() -> PathBuf {
    if let Some(p) = BINARY.get() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("MERIDIAN_BIN") {
        // Absolute, because nodes run with their own folder as working directory.
        let p = PathBuf::from(p);
        return std::path::absolute(&p).unwrap_or(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/meridian")
}

/// A running `meridian serve` process.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The DNS responder (UDP and TCP), when the node serves one.
    pub dns: Option<SocketAddr>,
}

/// Finds `"key":"value"` in the ready file's flat JSON object.
fn json_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

impl NodeProcess {
    /// Writes `config` (YAML) into a fresh folder and starts a node on it. Paths in the
    /// configuration may be relative to that folder; put files there first with
    /// [`NodeProcess::start_in`].
    pub fn start(config: &str) -> Result<NodeProcess, LaunchError> {
        Self::start_in(tempfile::Builder::new().prefix("meridian-node-").tempdir()?, config, &[])
    }

    /// Starts a node in `dir` (which may already hold certificates or token files), with
    /// extra environment variables.
    pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Result<NodeProcess, LaunchError> {
        Self::launch(dir, config, &["serve"], env)
    }

    /// Starts `meridian <command...> --config <dir>/gateway.yaml --ready-file ...` in `dir`,
    /// e.g. `&["cluster", "init", "--region", "eu-west"]`.
    pub fn launch(
        dir: tempfile::TempDir,
        config: &str,
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProcess, LaunchError> {
        std::fs::write(dir.path().join("gateway.yaml"), config)?;
        let mut node = NodeProcess {
            child: None,
            dir,
            http: None,
            https: None,
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            dns: None,
        };
        node.run(command, env)?;
        Ok(node)
    }

    /// Starts the process (again) in this node's folder: after [`NodeProcess::kill`], a
    /// restart with `&["serve"]` resumes from the node's data.
    pub fn run(&mut self, args: &[&str], env: &[(&str, &str)]) -> Result<(), LaunchError> {
        let binary = meridian_binary();
        if !binary.is_file() {
            return Err(LaunchError::NoBinary(binary));
        }
        let dir = self.dir.path();
        let config_path = dir.join("gateway.yaml");
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let stdout = std::fs::File::options().create(true).append(true).open(dir.join("stdout.log"))?;
        let stderr = std::fs::File::options().create(true).append(true).open(dir.join("stderr.log"))?;
        let mut command = Command::new(&binary);
        command
            .args(args)
            .arg("--workers")
            .arg("2")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn()?;
        let limit = Duration::from_secs(20);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                return Err(LaunchError::Exited { status, log });
            }
            if let Ok(text) = std::fs::read_to_string(&ready)
                && !text.is_empty()
            {
                let addr = |key: &str| json_field(&text, key).and_then(|a| a.parse().ok());
                self.admin = addr("admin").ok_or_else(|| LaunchError::BadReadyFile(text.clone()))?;
                self.http = addr("http");
                self.https = addr("https");
                self.dns = addr("dns");
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                return Err(LaunchError::NotReady(limit, log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL and waits for it; the folder stays for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The node's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file the node was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) with a pid we own; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Leaves the node's folder (data, logs) on disk when this value is dropped.
    pub fn keep(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// The node's own log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The access log so far (the node writes it to standard output by default).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json_field;

    #[test]
    fn reads_ready_file_fields() {
        let j = r#"{"admin":"127.0.0.1:9901","http":"127.0.0.1:8080","https":null,"pid":1}"#;
        assert_eq!(json_field(j, "admin").as_deref(), Some("127.0.0.1:9901"));
        assert_eq!(json_field(j, "https"), None);
    }
}
