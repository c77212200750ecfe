//! Assignment of rx queues to PMD threads.

/// An rx queue: (port index, queue index).
pub type RxqId = (usize, usize);

/// Spreads rx queues over `pmds` threads round robin, in port order then queue
/// order (as OVS's round-robin assignment), so consecutive queues of one multiqueue
/// port land on different cores.
pub fn round_robin(rxqs: &[RxqId], pmds: usize) -> Vec<Vec<RxqId>> {
    let mut out = vec![Vec::new(); pmds.max(1)];
    let mut sorted = rxqs.to_vec();
    sorted.sort();
    let n = out.len();
    for (i, rxq) in sorted.into_iter().enumerate() {
        out[i % n].push(rxq);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_once_and_balanced() {
        let rxqs: Vec<RxqId> = (0..3).flat_map(|p| (0..4).map(move |q| (p, q))).collect();
        let a = round_robin(&rxqs, 2);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].len(), 6);
        assert_eq!(a[1].len(), 6);
        let mut all: Vec<RxqId> = a.concat();
        all.sort();
        assert_eq!(all, rxqs);
        // The queues of one port are spread over both cores.
        assert!(a[0].contains(&(0, 0)) && a[1].contains(&(0, 1)));
    }

    #[test]
    fn more_cores_than_queues() {
        let a = round_robin(&[(0, 0)], 3);
        assert_eq!(a.iter().filter(|v| !v.is_empty()).count(), 1);
    }
}
