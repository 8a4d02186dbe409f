//! Round-robin, smooth weighted round-robin, least-connections and Pool validation.
use std::net::{Ipv4Addr, SocketAddrV4};

use dispatchd::{
    balance::{BackendSpec, BackendState, PolicyKind, Pool, PoolError},
    flow::FlowKey,
    ids::PoolIndex,
};

fn spec(i: u32, weight: u32) -> BackendSpec {
    BackendSpec {
        addr: SocketAddrV4::new(Ipv4Addr::from(0x0a00_0200 + i), 9000),
        weight,
    }
}

fn key(n: u32) -> FlowKey {
    FlowKey::new(
        SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + n), 40000 + (n % 1000) as u16),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80),
        6,
    )
}

fn pool(policy: PolicyKind, weights: &[u32]) -> Pool {
    let s: Vec<_> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| spec(i as u32, w))
        .collect();
    Pool::new(policy, &s).unwrap()
}

fn picks(p: &mut Pool, count: u32) -> Vec<u16> {
    (0..count).map(|n| p.select(&key(n)).unwrap().0).collect()
}

fn histogram(picks: &[u16], n: usize) -> Vec<u32> {
    let mut h = vec![0; n];
    picks.iter().for_each(|&i| h[usize::from(i)] += 1);
    h
}

const ALL: [PolicyKind; 4] = [
    PolicyKind::RoundRobin,
    PolicyKind::WeightedRoundRobin,
    PolicyKind::LeastConnections,
    PolicyKind::Maglev,
];

#[test]
fn pool_validation() {
    let ok = [spec(0, 1), spec(1, 2)];
    for policy in ALL {
        assert_eq!(<Pool>::new(policy, &[]).unwrap_err(), PoolError::NoBackends);
        assert_eq!(
            Pool::new(policy, &[spec(0, 1), spec(1, 0)]).unwrap_err(),
            PoolError::ZeroWeight(spec(1, 0).addr.into())
        );
        assert_eq!(
            Pool::new(policy, &[spec(0, 1), spec(1, 1), spec(0, 5)]).unwrap_err(),
            PoolError::Duplicate(spec(0, 1).addr.into())
        );
        let p = Pool::new(policy, &ok).unwrap();
        assert_eq!((p.policy(), p.len(), p.is_empty()), (policy, 2, false));
        assert_eq!(p.backends(), &ok);
        assert_eq!(p.addr(PoolIndex(1)), ok[1].addr);
        assert_eq!(p.state(PoolIndex(0)), BackendState::Up);
    }
    let many: Vec<_> = (0..65_536).map(|i| spec(i, 1)).collect();
    assert_eq!(
        Pool::new(PolicyKind::RoundRobin, &many).unwrap_err(),
        PoolError::TooMany(65_536)
    );
    assert!(Pool::new(PolicyKind::RoundRobin, &many[..65_535]).is_ok());
    assert_eq!(
        PoolError::ZeroWeight(spec(1, 0).addr.into()).to_string(),
        "backend 10.0.2.1:9000 has weight 0"
    );
}

#[test]
fn none_when_nothing_is_up() {
    for policy in ALL {
        let mut p = pool(policy, &[1, 2, 3]);
        p.set_state(PoolIndex(0), BackendState::Down);
        p.set_state(PoolIndex(1), BackendState::Draining);
        p.set_state(PoolIndex(2), BackendState::Down);
        assert_eq!(p.up_count(), 0);
        assert_eq!(p.select(&key(1)), None, "{policy}");
        p.set_state(PoolIndex(1), BackendState::Up);
        assert!(
            (0..50).all(|n| p.select(&key(n)) == Some(PoolIndex(1))),
            "{policy}"
        );
    }
}

#[test]
fn down_and_draining_get_nothing() {
    for policy in ALL {
        let mut p = pool(policy, &[1, 2, 3, 1, 1]);
        p.set_state(PoolIndex(1), BackendState::Down);
        p.set_state(PoolIndex(3), BackendState::Draining);
        let h = histogram(&picks(&mut p, 5000), 5);
        assert_eq!((h[1], h[3]), (0, 0), "{policy}: {h:?}");
        assert!(h[0] > 0 && h[2] > 0 && h[4] > 0, "{policy}: {h:?}");
    }
}

#[test]
fn round_robin_is_within_one_of_even() {
    for n in 1..=17u32 {
        let mut p = pool(PolicyKind::RoundRobin, &vec![1; n as usize]);
        for count in 0..3 * n + 2 {
            let mut q = p.clone();
            let h = histogram(&picks(&mut q, count), n as usize);
            let (lo, hi) = (h.iter().min().unwrap(), h.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n} count={count}: {h:?}");
        }
        // k·N picks: exactly k each, in order.
        let all = picks(&mut p, 4 * n);
        assert!(histogram(&all, n as usize).iter().all(|&c| c == 4));
        assert!(all
            .windows(2)
            .all(|w| u32::from(w[1]) == (u32::from(w[0]) + 1) % n));
    }
    // With some down: within one over the Up ones.
    let mut p = pool(PolicyKind::RoundRobin, &[1; 7]);
    p.set_state(PoolIndex(2), BackendState::Down);
    p.set_state(PoolIndex(5), BackendState::Draining);
    let h = histogram(&picks(&mut p, 5 * 5 + 3), 7);
    assert_eq!(h, vec![6, 6, 0, 6, 5, 0, 5]);
}

#[test]
fn weighted_round_robin_exact_and_smooth() {
    // nginx's own example: weights {5, 1, 1} give a a b a c a a (interleaved).
    let mut p = pool(PolicyKind::WeightedRoundRobin, &[5, 1, 1]);
    assert_eq!(picks(&mut p, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    for weights in [
        vec![1u32, 2, 3, 4],
        vec![5, 1, 1],
        vec![7, 3, 3, 1, 10],
        vec![2; 5],
    ] {
        let total: u32 = weights.iter().sum();
        let mut p = pool(PolicyKind::WeightedRoundRobin, &weights);
        for _cycle in 0..5 {
            let h = histogram(&picks(&mut p, total), weights.len());
            assert_eq!(h, weights, "exact per cycle");
        }
        // Smooth: no daemon with weight w gets more than ceil(total / ...) in a row;
        // in particular the heaviest never takes a whole cycle in one run.
        let seq = picks(&mut p, total * 3);
        let longest = seq
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        let max_w = *weights.iter().max().unwrap() as usize;
        assert!(longest < max_w.max(2), "{weights:?}: run of {longest}");
    }
    // State change: cycle restarts over the Up daemons, still exact.
    let mut p = pool(PolicyKind::WeightedRoundRobin, &[1, 2, 3, 4]);
    let _ = picks(&mut p, 3);
    p.set_state(PoolIndex(3), BackendState::Down);
    assert_eq!(histogram(&picks(&mut p, 6 * 3), 4), vec![3, 6, 9, 0]);
}

#[test]
fn least_connections_picks_minimum_and_rotates_ties() {
    let mut p = pool(PolicyKind::LeastConnections, &[1, 1, 1, 1]);
    // Ties rotate: opening nothing, successive picks cycle through all.
    assert_eq!(picks(&mut p, 8), vec![0, 1, 2, 3, 0, 1, 2, 3]);
    // Always the minimum when connections are counted.
    let mut p = pool(PolicyKind::LeastConnections, &[1, 1, 1, 1]);
    for (i, c) in [5u32, 2, 7, 2].into_iter().enumerate() {
        for _ in 0..c {
            p.connection_opened(PoolIndex(i as u16));
        }
    }
    let a = p.select(&key(0)).unwrap();
    let b = p.select(&key(1)).unwrap();
    assert!(
        [a, b].contains(&PoolIndex(1)) && [a, b].contains(&PoolIndex(3)),
        "{a} {b}"
    );
    for n in 0..100 {
        let i = p.select(&key(n)).unwrap();
        let min = (0..4).map(|j| p.active(PoolIndex(j))).min().unwrap();
        assert_eq!(p.active(i), min);
        p.connection_opened(i);
    }
    // 116 connections over 4: all at 29.
    assert!((0..4).all(|j| p.active(PoolIndex(j)) == 29));
    p.connection_closed(PoolIndex(2));
    assert_eq!(p.select(&key(0)), Some(PoolIndex(2)));
    // Saturating bookkeeping.
    let mut q = pool(PolicyKind::LeastConnections, &[1]);
    q.connection_closed(PoolIndex(0));
    assert_eq!(q.active(PoolIndex(0)), 0);
}

#[test]
fn least_connections_respects_weights() {
    let mut p = pool(PolicyKind::LeastConnections, &[1, 3]);
    for n in 0..400 {
        let i = p.select(&key(n)).unwrap();
        p.connection_opened(i);
    }
    assert_eq!((p.active(PoolIndex(0)), p.active(PoolIndex(1))), (100, 300));
    // Down daemons are skipped even with fewest connections.
    let mut p = pool(PolicyKind::LeastConnections, &[1, 1, 1]);
    p.connection_opened(PoolIndex(1));
    p.connection_opened(PoolIndex(2));
    p.set_state(PoolIndex(0), BackendState::Draining);
    assert!((0..10).all(|n| p.select(&key(n)) != Some(PoolIndex(0))));
}

#[test]
fn connection_counts_kept_for_every_policy() {
    for policy in ALL {
        let mut p = pool(policy, &[1, 1]);
        p.connection_opened(PoolIndex(1));
        p.connection_opened(PoolIndex(1));
        p.connection_closed(PoolIndex(1));
        assert_eq!((p.active(PoolIndex(0)), p.active(PoolIndex(1))), (0, 1));
    }
}
