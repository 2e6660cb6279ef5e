//! A shared store behind Redis Sentinel (`redis+sentinel://`): real
//! redis-server processes, a master, its replica and one Sentinel. Two
//! daemons share sessions through the master the Sentinel names; after a
//! failover (`SENTINEL FAILOVER`) they follow the new master, with no failed
//! reply and at most one warning each.
#![allow(clippy::unwrap_used)]
use crate::common;
use crate::common::redis_server;

use common::*;
use redis_server::{available, free_port, real_now, write_secret, RedisServer};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Reply, Status};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-site-secret";

/// A redis-server in Sentinel mode watching `master_port` as service `mx`.
struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mx 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mx 1000\n\
                 sentinel failover-timeout mx 5000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(redis_server::redis_server())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = c.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// The port of the master it names now.
    fn master_port(&self) -> Option<u16> {
        let v: Vec<String> = redis::from_redis_value(
            self.cmd(&["SENTINEL", "get-master-addr-by-name", "mx"])
                .ok()?,
        )
        .ok()?;
        v.get(1)?.parse().ok()
    }

    /// How many replicas of `mx` it knows.
    fn replicas(&self) -> usize {
        self.cmd(&["SENTINEL", "replicas", "mx"])
            .ok()
            .and_then(|v| redis::from_redis_value::<Vec<redis::Value>>(v).ok())
            .map_or(0, |v| v.len())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host(sentinel_port: u16) -> TestDaemon {
    let cf = format!(
        "tlsmgr_shared_store = redis+sentinel://127.0.0.1:{sentinel_port}/mx/0\n\
         tlsmgr_shared_site = mx\n\
         tlsmgr_shared_secret_file = ${{queue_directory}}/shared.key\n\
         tlsmgr_shared_lookup_deadline = 200ms\n"
    );
    TestDaemon::start_at(&cf, real_now(), false, |dir| {
        write_secret(&dir.join("shared.key"), SECRET)
    })
}

fn sessions_in(r: &RedisServer) -> usize {
    r.dump()
        .iter()
        .filter(|(n, _)| n.starts_with("tlsmgr:mx:sc:smtpd:"))
        .count()
}

#[test]
fn hosts_follow_the_master_the_sentinel_names_across_a_failover() {
    if !available() {
        return;
    }
    let master = RedisServer::start().unwrap();
    let mport = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mport]).unwrap();
    wait_for("the replica to sync", Duration::from_secs(20), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .unwrap_or_default();
        info.contains("master_link_status:up")
    });
    let sentinel = Sentinel::start(master.port);
    wait_for("the Sentinel to know both", Duration::from_secs(30), || {
        sentinel.master_port() == Some(master.port) && sentinel.replicas() == 1
    });
    let a = host(sentinel.port);
    let b = host(sentinel.port);
    // Shared through the master the Sentinel names.
    assert_eq!(
        update(&mut a.client(), "smtpd", "before-failover", b"ONE"),
        Reply::Status(Status::Ok)
    );
    assert!(eventually(|| lookup(
        &mut b.client(),
        "smtpd",
        "before-failover"
    ) == hit(b"ONE")));
    assert!(sessions_in(&master) >= 1);
    assert!(a
        .log
        .text()
        .contains(&format!("Sentinel names master 127.0.0.1:{}", master.port)));

    // The replica becomes the master; the old master becomes its replica
    // and refuses writes.
    sentinel.cmd(&["SENTINEL", "FAILOVER", "mx"]).unwrap();
    wait_for("the failover", Duration::from_secs(30), || {
        sentinel.master_port() == Some(replica.port)
    });
    // Every reply stays OK meanwhile. Writes to the old master fail once
    // it is demoted, the breaker opens, and A asks the Sentinel again;
    // sessions written after that cross hosts through the new master.
    let new_master = format!("Sentinel names master 127.0.0.1:{}", replica.port);
    let start = Instant::now();
    let mut switched_at = None;
    let mut i = 0;
    loop {
        i += 1;
        let id = format!("after-failover-{i}");
        assert_eq!(
            update(&mut a.client(), "smtpd", &id, b"TWO"),
            Reply::Status(Status::Ok)
        );
        std::thread::sleep(Duration::from_millis(100));
        if switched_at.is_none() && a.log.text().contains(&new_master) {
            switched_at = Some((i, start.elapsed()));
        }
        if switched_at.is_some_and(|(s, _)| i > s)
            && eventually(|| lookup(&mut b.client(), "smtpd", &id) == hit(b"TWO"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "A never followed the new master\n{}",
            a.log.text()
        );
    }
    let (_, after) = switched_at.unwrap();
    println!(
        "A followed the new master {:.1} s after the failover completed; \
         {i} updates meanwhile, all OK",
        after.as_secs_f64()
    );
    let stored: Vec<String> = redis::cmd("KEYS")
        .arg("tlsmgr:mx:sc:smtpd:*")
        .query(&mut replica.conn())
        .unwrap();
    assert!(stored.len() >= 2, "{stored:?}");
    // Asked about once a second, the Sentinel's answer is logged only when
    // it changes: once for each master, no repeats.
    let text = a.log.text();
    for port in [master.port, replica.port] {
        let line = format!("Sentinel names master 127.0.0.1:{port}");
        assert_eq!(text.matches(&line).count(), 1, "{text}");
    }
    for h in [&a, &b] {
        let text = h.log.text();
        assert!(h.warnings().len() <= 1, "{text}");
        assert!(!text.contains("panic"), "{text}");
    }
}
