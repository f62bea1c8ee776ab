//! Separate hosts on one machine: one Linux network namespace per host, each with its own
//! address on a bridge, joined by veth pairs (Debian's iproute2). The test process stays in the
//! root namespace, whose address on the bridge is the "client" host. `cut` takes a host's link
//! down, as a pulled cable would.
//!
//! Making namespaces needs root. `recsys bench cluster` uses it, and the tests include this
//! file (`tests/common/mod.rs`, which adds what only tests need).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NETS: AtomicU32 = AtomicU32::new(0);

/// A bridge and the namespaces on it; everything is removed on drop.
pub struct Net {
    tag: String,
    bridge: String,
    /// The first three octets of the subnet, e.g. `10.123.4`.
    prefix: String,
    hosts: Vec<String>,
    children: Vec<Child>,
}

/// One host: a namespace with one interface, `eth0`, at `addr`.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: String,
    /// The veth end in the root namespace (taking it down cuts the host off).
    veth: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (Debian's iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// A new bridge with the root namespace on it; the error says why one cannot be made.
    pub fn new() -> Result<Net, String> {
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{:x}{n:x}", pid % 0xffff);
        let net = Net {
            bridge: format!("rb{tag}"),
            prefix: format!("10.{}.{}", 100 + pid % 100, n % 250 + 1),
            tag,
            hosts: Vec::new(),
            children: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", net.prefix),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// This (the test) process's address on the bridge.
    pub fn client_addr(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A new host on the bridge.
    pub fn host(&mut self, name: &str) -> Result<Host, String> {
        let n = self.hosts.len() + 2;
        let host = Host {
            name: name.to_string(),
            ns: format!("rs{}-{name}", self.tag),
            addr: format!("{}.{n}", self.prefix),
            veth: format!("rv{}{n}", self.tag),
        };
        let cidr = format!("{}/24", host.addr);
        let steps: [&[&str]; 7] = [
            &["netns", "add", &host.ns],
            &[
                "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns",
                &host.ns,
            ],
            &["link", "set", &host.veth, "master", &self.bridge, "up"],
            &["-n", &host.ns, "addr", "add", &cidr, "dev", "eth0"],
            &["-n", &host.ns, "link", "set", "eth0", "up"],
            &["-n", &host.ns, "link", "set", "lo", "up"],
            &[
                "-n",
                &host.ns,
                "route",
                "add",
                "default",
                "via",
                &self.client_addr(),
            ],
        ];
        self.hosts.push(host.ns.clone());
        for step in steps {
            ip(step).map_err(|e| format!("making host {name}: {e}"))?;
        }
        Ok(host)
    }

    /// Starts `program args` on `host` with `env`, its output to `log`; the process is killed
    /// when the net is dropped (unless the test kills it first).
    pub fn spawn(
        &mut self,
        host: &Host,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<u32, String> {
        let failed = |e: std::io::Error| format!("starting {program} on {}: {e}", host.name);
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).map_err(failed)?)
            .spawn()
            .map_err(failed)?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Takes `host`'s link down (`up = false`) or up again: its processes keep running but
    /// nothing reaches them and they reach nothing.
    pub fn link(&self, host: &Host, up: bool) -> Result<(), String> {
        ip(&["link", "set", &host.veth, if up { "up" } else { "down" }])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Kills process `pid` with SIGKILL.
pub fn kill9(pid: u32) {
    // `ip netns exec` execs the program, so the child's pid is the program's.
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// CPU seconds (user + system) process `pid` has used (`self`: this one), from `/proc`.
pub fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            // /proc reports in USER_HZ, 100 on Linux.
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}
