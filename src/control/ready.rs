//! Readiness: whether this instance should receive traffic, the signal an
//! operator's BGP speaker follows to announce the VIPs or withdraw them
//! (`dispatchd ctl ready`, `GET /ready`, `dispatchd_ready`).
//!
//! Ready only while every worker runs, every service has at least one daemon
//! that takes new connections (up, next hop known, not drained, not retired),
//! and no stop is under way. Pure: the loop gathers the facts, this decides.
use std::{fmt, net::SocketAddr};

use super::backends::Backend;
use crate::{
    balance::BackendState,
    config::{service_name, Protocol},
};

/// Why an instance is not ready; `Display` is the one line the operator sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// SIGTERM began a graceful stop: traffic still flows for `left_ms`, but
    /// new traffic should go elsewhere.
    Stopping { left_ms: u64 },
    /// A worker thread ended; its queues' frames go unserved.
    WorkerStopped { worker: usize },
    /// These services have no daemon that takes new connections.
    /// (Named as ctl and metrics name them: `VIP:PORT`, `VIP:PORT/udp`.)
    NoHealthyDaemon { services: Vec<String> },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Stopping { left_ms } => {
                write!(f, "stopping (SIGTERM; forwarding for {left_ms} ms more)")
            }
            NotReady::WorkerStopped { worker } => write!(f, "worker {worker} is not running"),
            NotReady::NoHealthyDaemon { services } => {
                let (noun, verb) = if services.len() == 1 {
                    ("service", "has")
                } else {
                    ("services", "have")
                };
                write!(f, "{noun} {} {verb} no healthy daemon", services.join(", "))
            }
        }
    }
}

/// The facts the decision needs, as the loop sees them at one moment.
pub struct Facts<'a, B> {
    /// The graceful stop's time left, if one is under way.
    pub stopping_left_ms: Option<u64>,
    /// Whether each worker still runs, in worker order.
    pub workers_running: &'a [bool],
    /// The configured services, in order: a VIP:PORT may be a TCP and a UDP
    /// service, each with its own daemons.
    pub services: &'a [(SocketAddr, Protocol)],
    /// Every daemon the loop knows (configured and retired).
    pub backends: B,
}

/// Ready, or the first reason not to be: stopping, then a stopped worker, then
/// the services without a healthy daemon (all of them, so one answer names
/// every service an operator must look at).
pub fn decide<'a, B>(facts: Facts<'_, B>) -> Result<(), NotReady>
where
    B: IntoIterator<Item = &'a Backend>,
{
    if let Some(left_ms) = facts.stopping_left_ms {
        return Err(NotReady::Stopping { left_ms });
    }
    if let Some(worker) = facts.workers_running.iter().position(|running| !running) {
        return Err(NotReady::WorkerStopped { worker });
    }
    let mut healthy = vec![false; facts.services.len()];
    for b in facts.backends {
        if b.effective() != BackendState::Up {
            continue;
        }
        let of_backend = (b.service, b.protocol);
        if let Some(i) = facts.services.iter().position(|s| *s == of_backend) {
            healthy[i] = true;
        }
    }
    let services: Vec<String> = facts
        .services
        .iter()
        .zip(&healthy)
        .filter(|(_, ok)| !**ok)
        .map(|(&(address, protocol), _)| service_name(address, protocol))
        .collect();
    if services.is_empty() {
        Ok(())
    } else {
        Err(NotReady::NoHealthyDaemon { services })
    }
}

/// The control socket's answer: `ready` or `not ready: WHY`, one line.
pub fn line(decision: &Result<(), NotReady>) -> String {
    match decision {
        Ok(()) => "ready\n".to_owned(),
        Err(why) => format!("not ready: {why}\n"),
    }
}

/// The same as JSON: `{"ready":true}` or `{"ready":false,"reason":"..."}`.
pub fn json(decision: &Result<(), NotReady>) -> String {
    match decision {
        Ok(()) => "{\"ready\":true}\n".to_owned(),
        Err(why) => format!(
            "{{\"ready\":false,\"reason\":{}}}\n",
            serde_json::Value::String(why.to_string())
        ),
    }
}

/// The answer to `GET /ready`: 200 when ready, 503 otherwise, the same line
/// as the control socket's in the body (a speaker's health check may read
/// either).
pub fn http(decision: &Result<(), NotReady>) -> String {
    let status = match decision {
        Ok(()) => "200 OK",
        Err(_) => "503 Service Unavailable",
    };
    let body = line(decision);
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Config, ReplyMode},
        control::backends::Backends,
        dataplane::Retired,
        ids::BackendId,
    };

    const VIP_A: &str = "198.18.0.100:80";
    const VIP_B: &str = "198.18.0.101:80";

    fn config() -> Config {
        Config::from_toml_str(&format!(
            r#"
            front = "l0"
            back = "l1"
            [[service]]
            address = "{VIP_A}"
            backends = ["198.19.0.11:8080", "198.19.0.12:8080"]
            [[service]]
            address = "{VIP_B}"
            backends = ["198.19.0.13:8080"]
            "#
        ))
        .unwrap()
    }

    fn backends(config: &Config, retired: &[Retired]) -> Backends {
        Backends::new(config, retired, &Backends::default(), |_| true, 0)
    }

    fn services(config: &Config) -> Vec<(SocketAddr, Protocol)> {
        config.all_services().collect()
    }

    fn decide_on(
        b: &Backends,
        services: &[(SocketAddr, Protocol)],
        workers: &[bool],
        stopping: Option<u64>,
    ) -> Result<(), NotReady> {
        decide(Facts {
            stopping_left_ms: stopping,
            workers_running: workers,
            services,
            backends: b.iter(),
        })
    }

    /// Fails a daemon's probes until its health says down.
    fn take_down(b: &mut Backends, id: BackendId) {
        let generation = b.generation();
        for _ in 0..10 {
            b.probe_done(id, generation, false);
        }
        assert_eq!(b.get(id).effective(), BackendState::Down);
    }

    #[test]
    fn ready_when_every_worker_runs_and_every_service_has_a_healthy_daemon() {
        let c = config();
        assert_eq!(c.reply_mode, ReplyMode::Stateless);
        let b = backends(&c, &[]);
        assert_eq!(decide_on(&b, &services(&c), &[true, true], None), Ok(()));
        assert_eq!(line(&Ok(())), "ready\n");
        assert_eq!(json(&Ok(())), "{\"ready\":true}\n");
        assert!(http(&Ok(())).starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn one_healthy_daemon_is_enough_for_its_service() {
        let c = config();
        let mut b = backends(&c, &[]);
        take_down(&mut b, BackendId(0));
        assert_eq!(decide_on(&b, &services(&c), &[true], None), Ok(()));
        b.set_draining(BackendId(1), true);
        let no = decide_on(&b, &services(&c), &[true], None);
        assert_eq!(
            no,
            Err(NotReady::NoHealthyDaemon {
                services: vec![VIP_A.to_owned()]
            })
        );
        assert_eq!(
            line(&no),
            "not ready: service 198.18.0.100:80 has no healthy daemon\n"
        );
        let http = http(&no);
        assert!(
            http.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{http}"
        );
        assert!(
            http.ends_with("\r\n\r\nnot ready: service 198.18.0.100:80 has no healthy daemon\n")
        );
        assert_eq!(
            json(&no),
            "{\"ready\":false,\"reason\":\"service 198.18.0.100:80 has no healthy daemon\"}\n"
        );
    }

    #[test]
    fn every_service_without_a_healthy_daemon_is_named() {
        let c = config();
        let mut b = backends(&c, &[]);
        for id in [0, 1, 2] {
            take_down(&mut b, BackendId(id));
        }
        let no = decide_on(&b, &services(&c), &[true], None).unwrap_err();
        assert_eq!(
            no.to_string(),
            "services 198.18.0.100:80, 198.18.0.101:80 have no healthy daemon"
        );
    }

    #[test]
    fn a_daemon_without_a_known_next_hop_is_not_healthy() {
        let c = config();
        // Only the first service's daemons have a next hop.
        let b = Backends::new(&c, &[], &Backends::default(), |id| id.0 < 2, 0);
        assert_eq!(
            decide_on(&b, &services(&c), &[true], None),
            Err(NotReady::NoHealthyDaemon {
                services: vec![VIP_B.to_owned()]
            })
        );
    }

    #[test]
    fn a_retired_daemon_does_not_make_its_service_ready() {
        let c = Config::from_toml_str(&format!(
            r#"
            front = "l0"
            back = "l1"
            [[service]]
            address = "{VIP_A}"
            backends = ["198.19.0.11:8080"]
            "#
        ))
        .unwrap();
        let retired = [Retired {
            daemon: "198.19.0.12:8080".parse().unwrap(),
            service: VIP_A.parse().unwrap(),
            protocol: crate::config::Protocol::Tcp,
        }];
        let mut b = backends(&c, &retired);
        take_down(&mut b, BackendId(0));
        assert!(decide_on(&b, &services(&c), &[true], None).is_err());
    }

    #[test]
    fn an_ipv6_service_counts_as_any_other() {
        let c = Config::from_toml_str(&format!(
            r#"
            front = "l0"
            back = "l1"
            [[service]]
            address = "{VIP_A}"
            backends = ["198.19.0.11:8080"]
            [[service]]
            address = "[2001:2:0:1::100]:80"
            backends = ["[2001:2:0:2::11]:8080", "[2001:2:0:2::12]:8080"]
            "#
        ))
        .unwrap();
        let mut b = backends(&c, &[]);
        assert_eq!(decide_on(&b, &services(&c), &[true], None), Ok(()));
        take_down(&mut b, BackendId(1));
        assert_eq!(decide_on(&b, &services(&c), &[true], None), Ok(()));
        take_down(&mut b, BackendId(2));
        let no = decide_on(&b, &services(&c), &[true], None);
        assert_eq!(
            line(&no),
            "not ready: service [2001:2:0:1::100]:80 has no healthy daemon\n"
        );
    }

    #[test]
    fn a_tcp_and_a_udp_service_on_one_vip_port_are_judged_apart() {
        let c = Config::from_toml_str(
            r#"
            front = "l0"
            back = "l1"
            [[service]]
            address = "198.18.0.100:53"
            backends = ["198.19.0.11:53"]
            [[service]]
            address = "198.18.0.100:53"
            protocol = "udp"
            backends = ["198.19.0.12:53"]
            "#,
        )
        .unwrap();
        let mut b = backends(&c, &[]);
        assert_eq!(decide_on(&b, &services(&c), &[true], None), Ok(()));
        // The UDP daemon is never probed: it stays up while the TCP one fails.
        take_down(&mut b, BackendId(0));
        let no = decide_on(&b, &services(&c), &[true], None);
        assert_eq!(
            line(&no),
            "not ready: service 198.18.0.100:53 has no healthy daemon\n"
        );
        b.set_draining(BackendId(1), true);
        let no = decide_on(&b, &services(&c), &[true], None).unwrap_err();
        assert_eq!(
            no.to_string(),
            "services 198.18.0.100:53, 198.18.0.100:53/udp have no healthy daemon"
        );
    }

    #[test]
    fn a_stopped_worker_makes_it_unready() {
        let c = config();
        let b = backends(&c, &[]);
        let no = decide_on(&b, &services(&c), &[true, false], None);
        assert_eq!(no, Err(NotReady::WorkerStopped { worker: 1 }));
        assert_eq!(line(&no), "not ready: worker 1 is not running\n");
    }

    #[test]
    fn stopping_comes_first_whatever_else_holds() {
        let c = config();
        let mut b = backends(&c, &[]);
        take_down(&mut b, BackendId(2));
        let no = decide_on(&b, &services(&c), &[false], Some(1500));
        assert_eq!(no, Err(NotReady::Stopping { left_ms: 1500 }));
        assert_eq!(
            line(&no),
            "not ready: stopping (SIGTERM; forwarding for 1500 ms more)\n"
        );
    }
}
