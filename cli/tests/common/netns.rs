//! Separate hosts on one machine: one Linux network namespace per host, each with its own
//! address on a bridge, joined by veth pairs (Debian's iproute2). The test process stays in the
//! root namespace, whose address on the bridge is the "client" host. `cut` takes a host's link
//! down, as a pulled cable would.
//!
//! Making namespaces needs root. Where they cannot be made, [`Net::create`] prints why and
//! returns `None` (the test then passes as skipped, loudly), unless `RECSYS_REQUIRE_NETNS=1`
//! (set by `scripts/test`, so CI) makes that a failure.

use std::os::fd::AsRawFd;
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
    /// A new bridge with the root namespace on it, or `None` (after printing why) where
    /// namespaces cannot be made and `RECSYS_REQUIRE_NETNS` is not set.
    pub fn create(what: &str) -> Option<Net> {
        match Net::try_create() {
            Ok(net) => Some(net),
            Err(why) => {
                let require = std::env::var("RECSYS_REQUIRE_NETNS").is_ok_and(|v| v == "1");
                assert!(
                    !require,
                    "{what}: network namespaces are required (RECSYS_REQUIRE_NETNS=1) but \
                     cannot be made: {why}"
                );
                eprintln!(
                    "SKIPPED {what}: it needs separate hosts in network namespaces, which \
                     cannot be made here ({why}); run as root with iproute2 (scripts/test \
                     requires them)"
                );
                None
            }
        }
    }

    fn try_create() -> Result<Net, String> {
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
    pub fn host(&mut self, name: &str) -> Host {
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
            ip(step).unwrap_or_else(|e| panic!("making host {name}: {e}"));
        }
        host
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
    ) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} on {}: {e}", host.name));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Takes `host`'s link down (`up = false`) or up again: its processes keep running but
    /// nothing reaches them and they reach nothing.
    pub fn link(&self, host: &Host, up: bool) {
        ip(&["link", "set", &host.veth, if up { "up" } else { "down" }]).unwrap();
    }

    /// A TCP listener on `host`'s address, made inside its namespace: the socket stays there
    /// while this process serves it, so a server of the test process runs on its own host.
    pub fn listen_on(&self, host: &Host, port: u16) -> std::net::TcpListener {
        let ns = format!("/var/run/netns/{}", host.ns);
        let addr = format!("{}:{port}", host.addr);
        std::thread::spawn(move || {
            let handle = std::fs::File::open(&ns).unwrap();
            // SAFETY: setns on this short-lived thread only moves this thread, which then binds
            // one socket and ends.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            std::net::TcpListener::bind(&addr).unwrap()
        })
        .join()
        .unwrap()
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
