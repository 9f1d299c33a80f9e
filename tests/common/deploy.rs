//! Helpers for the deployment checks (`tests/deploy.rs`) and the multi-host
//! test (`tests/multihost.rs`): the test venv's tools, YAML read through
//! PyYAML, kustomize rendering, and a LAN of network namespaces.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bin directory of the test venv (`TOLLGATE_TEST_PYTHON`'s, else `.venv/bin`).
fn venv_bin() -> PathBuf {
    match std::env::var_os("TOLLGATE_TEST_PYTHON") {
        Some(p) => PathBuf::from(p).parent().unwrap().to_path_buf(),
        None => repo().join(".venv/bin"),
    }
}

/// A tool installed in the test venv by `./scripts/test` (PyYAML,
/// kubernetes-validate, hadolint).
pub fn venv_tool(name: &str) -> PathBuf {
    let p = venv_bin().join(name);
    assert!(
        p.exists(),
        "{} missing: run ./scripts/test (it installs the test venv's tools)",
        p.display()
    );
    p
}

/// A program from `PATH` that `./scripts/test` installs (promtool, kubectl).
pub fn system_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} not on PATH: run ./scripts/test (it installs it)"))
}

/// Runs `cmd`, feeding `stdin`; panics with its output unless it succeeds.
pub fn run_ok(mut cmd: Command, stdin: &str) -> Output {
    use std::io::Write;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_owned();
    // Written from a thread: a large input must not dead-lock against a full stdout pipe.
    let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every document of a YAML text, as JSON values (PyYAML's safe loader:
/// anchors and merge keys resolved as Compose and kubectl resolve them).
pub fn yaml_docs(text: &str) -> Vec<Value> {
    let mut cmd = Command::new(venv_tool("python"));
    cmd.args([
        "-c",
        "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
    ]);
    let out = run_ok(cmd, text);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one document of a YAML file.
pub fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = yaml_docs(&text);
    assert_eq!(
        docs.len(),
        1,
        "{}: one YAML document expected",
        path.display()
    );
    docs.remove(0)
}

/// `kubectl kustomize DIR`: the rendered manifests as text.
pub fn kustomize(dir: &Path) -> String {
    let mut cmd = Command::new(system_tool("kubectl"));
    cmd.arg("kustomize").arg(dir);
    String::from_utf8(run_ok(cmd, "").stdout).unwrap()
}

/// `{ env = "NAME" }` sources of a TOML config: the names it reads secrets from.
pub fn env_secrets(toml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = toml;
    while let Some(i) = rest.find("env = \"") {
        rest = &rest[i + 7..];
        let end = rest.find('"').unwrap();
        out.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    out
}

/// A stand-in secret for checks: long enough, and different for each name.
pub fn fake_secret(name: &str) -> String {
    format!("test-only-{}-{}", name.to_ascii_lowercase(), "x".repeat(40))
}

/// `tollgate check-config --config PATH` with `env`; its exit code and output.
pub fn check_config(path: &Path, env: &[(String, String)]) -> (i32, String) {
    let dir = path.parent().unwrap();
    let mut cmd = super::command(dir);
    cmd.arg("check-config").arg("--config").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every file under `dir` (recursively) whose name ends with one of `exts`.
pub fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if exts
                .iter()
                .any(|x| p.file_name().unwrap().to_string_lossy().ends_with(x))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// A LAN of network namespaces.

/// Network namespaces joined by a bridge (itself in a namespace of its own),
/// each host with one address of a private /24 that exists only inside them;
/// one veth from the root namespace lets the test reach them. Everything is
/// deleted on drop, also when the test fails.
pub struct Lan {
    prefix: String,
    subnet: String,
    hosts: Vec<String>,
    host_veth: String,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Why namespaces cannot be made, if they cannot.
fn netns_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespaces of earlier runs whose test process died without
/// cleaning up (killed by a timeout, say): `tgmh<pid>-…` with `pid` gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("tgmh")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Lan {
    /// Makes one namespace per name in `hosts` (addresses .11, .12, … in
    /// order) on a LAN. `None`, after saying why on stderr, only for a
    /// developer who is not root; as root, and always under CI (`CI` set),
    /// namespaces that cannot be made fail the test rather than skip it.
    pub fn create(hosts: &[&str]) -> Option<Lan> {
        let must = std::env::var_os("CI").is_some() || is_root();
        if let Some(why) = netns_unavailable() {
            assert!(
                !must,
                "network namespaces are needed and unavailable: {why}"
            );
            eprintln!("SKIPPED: network namespaces unavailable ({why})");
            return None;
        }
        remove_stale();
        let pid = std::process::id();
        // A /24 of 10.200.0.0/13 chosen by pid, so concurrent runs do not collide.
        let subnet = format!("10.{}.{}", 200 + (pid / 256) % 8, pid % 256);
        let lan = Lan {
            prefix: format!("tgmh{pid}"),
            subnet,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            host_veth: format!("tgmh{pid}"),
        };
        if let Err(e) = ip(&["netns", "add", &lan.ns("lan")]) {
            assert!(
                !must,
                "network namespaces are needed and cannot be made: {e}"
            );
            eprintln!("SKIPPED: network namespaces unavailable ({e})");
            return None;
        }
        lan.build()
            .unwrap_or_else(|e| panic!("building the namespaces: {e}"));
        Some(lan)
    }

    fn build(&self) -> Result<(), String> {
        let lan = self.ns("lan");
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        for (i, h) in self.hosts.iter().enumerate() {
            let ns = self.ns(h);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(h)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &self.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            &lan,
        ])?;
        ip(&["-n", &lan, "link", "set", "uplink", "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", self.subnet),
            "dev",
            &self.host_veth,
        ])?;
        ip(&["link", "set", &self.host_veth, "up"])?;
        Ok(())
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Host `name`'s address on the LAN.
    pub fn addr(&self, name: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no host {name}"));
        format!("{}.{}", self.subnet, 11 + i)
    }

    /// A command run inside host `name`'s namespace.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name)]).arg(program);
        cmd
    }

    /// `tollgate ARGS…` inside host `name`, with a clean `TOLLGATE_*`
    /// environment and its own working directory (no files are shared).
    pub fn tollgate(&self, name: &str, dir: &Path) -> Command {
        let mut cmd = self.command(name, super::tollgate_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("TOLLGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(dir).env("TOLLGATE_LOG", "info");
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // The root end first (synchronous), then the namespaces; processes
        // inside them were killed by their `Proc` guards before this runs.
        let _ = ip(&["link", "del", &self.host_veth]);
        for h in self.hosts.iter().chain(std::iter::once(&"lan".to_owned())) {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
    }
}
