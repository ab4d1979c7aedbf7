//! A real `flowplane run` for end-to-end tests: started as a child process with a test's own
//! configuration file, its log read line by line, stopped with SIGTERM (which flushes the open
//! window), and killed if the test fails first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::env;

/// The Valkey the tests write to: `$FLOWPLANE_VALKEY_URL`, else the one
/// `scripts/services.sh start` runs.
pub fn valkey_url() -> String {
    std::env::var("FLOWPLANE_VALKEY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Kafka-protocol brokers: `$FLOWPLANE_KAFKA_BROKERS`, else the local tansu.
pub fn kafka_brokers() -> String {
    std::env::var("FLOWPLANE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `name=value` of a summary line (the first occurrence), as a number.
pub fn counter(summary: &str, name: &str) -> Option<u64> {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

/// A running `flowplane run`.
#[derive(Debug)]
pub struct Flowplane {
    child: Child,
    /// The address its (first) listener is bound to.
    pub bound: SocketAddr,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Flowplane {
    /// Starts `flowplane run --config CONFIG` and waits until it listens.
    ///
    /// # Errors
    ///
    /// The binary is missing, or it did not log its listening address within 30 s.
    pub fn start(config: &Path) -> Result<Self> {
        let mut child = Command::new(env::flowplane_bin()?)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start flowplane")?;
        let stderr = child.stderr.take().context("flowplane stderr")?;
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fp = Self {
            child,
            bound: "0.0.0.0:0".parse()?,
            log,
            lines: Vec::new(),
        };
        let line = fp.wait_for_line("Listening", Duration::from_secs(30))?;
        fp.bound = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no addr= in `{line}`"))?;
        Ok(fp)
    }

    /// Waits for a log line containing `needle`; the lines read meanwhile are kept.
    ///
    /// # Errors
    ///
    /// No such line within `timeout` (the error holds the log so far).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.log.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    self.lines.push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        bail!(
            "flowplane did not log `{needle}` within {timeout:?}; its log:\n{}",
            self.lines.join("\n")
        )
    }

    /// SIGTERM, then waits for the exit; returns the final summary line and the whole log.
    ///
    /// # Errors
    ///
    /// No `Stopped:` line within 30 s, or a failing exit status.
    pub fn stop(mut self) -> Result<(String, Vec<String>)> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let line = self.wait_for_line("Stopped:", Duration::from_secs(30))?;
        let status = self.child.wait()?;
        ensure!(status.success(), "flowplane exited with {status}");
        while let Ok(l) = self.log.try_recv() {
            self.lines.push(l);
        }
        Ok((line, std::mem::take(&mut self.lines)))
    }
}

impl Drop for Flowplane {
    fn drop(&mut self) {
        // A failed test must not leave its flowplane running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
