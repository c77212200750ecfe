//! Placement of rx queues on PMD threads, by measured load (as OVS's
//! `pmd-rxq-assign=cycles`).
//!
//! A queue's load is the processing cycles it cost over the last measurement window.
//! A new queue goes to the least loaded thread; [`by_cycles`] places every queue
//! afresh, heaviest first, each on the thread that is least loaded so far. Ties go to
//! the thread with fewer queues, then the lower index, so with no load measured yet
//! the queues of one multiqueue port land on different threads, round robin.

/// An rx queue: (port number, queue index).
pub type RxqId = (usize, usize);

/// The thread a new queue goes to: least load, then fewest queues, then lowest index.
/// `threads` is each thread's (load, number of queues).
pub fn least_loaded(threads: &[(u64, usize)]) -> usize {
    (0..threads.len())
        .min_by_key(|&i| (threads[i].0, threads[i].1, i))
        .unwrap_or(0)
}

/// Places every queue (with its load) on one of `pmds` threads: heaviest first, each
/// on the least loaded thread so far. Returns the queues of each thread, in port
/// and queue order.
pub fn by_cycles(rxqs: &[(RxqId, u64)], pmds: usize) -> Vec<Vec<RxqId>> {
    let mut sorted = rxqs.to_vec();
    // Heaviest first; equal loads in port and queue order.
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = vec![Vec::new(); pmds.max(1)];
    let mut threads = vec![(0u64, 0usize); out.len()];
    for (id, load) in sorted {
        let t = least_loaded(&threads);
        threads[t].0 += load;
        threads[t].1 += 1;
        out[t].push(id);
    }
    for v in out.iter_mut() {
        v.sort();
    }
    out
}

/// The load of the busiest thread under `plan`, given each queue's load.
pub fn max_load(plan: &[Vec<RxqId>], load: impl Fn(RxqId) -> u64) -> u64 {
    plan.iter()
        .map(|qs| qs.iter().map(|&q| load(q)).sum())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_load_queues_go_round_robin() {
        let rxqs: Vec<(RxqId, u64)> = (0..3)
            .flat_map(|p| (0..4).map(move |q| ((p, q), 0)))
            .collect();
        let a = by_cycles(&rxqs, 2);
        assert_eq!(a[0].len(), 6);
        assert_eq!(a[1].len(), 6);
        let mut all: Vec<RxqId> = a.concat();
        all.sort();
        assert_eq!(all, rxqs.iter().map(|r| r.0).collect::<Vec<_>>());
        // The queues of one port are spread over both threads.
        assert!(a[0].contains(&(0, 0)) && a[1].contains(&(0, 1)));
    }

    #[test]
    fn heavy_queues_are_spread_and_light_ones_fill_in() {
        // Two busy queues that a round-robin placement put on one thread.
        let rxqs = [((0, 0), 900), ((1, 0), 10), ((2, 0), 800), ((3, 0), 5)];
        let a = by_cycles(&rxqs, 2);
        let busy0 = a.iter().position(|t| t.contains(&(0, 0))).unwrap();
        let busy2 = a.iter().position(|t| t.contains(&(2, 0))).unwrap();
        assert_ne!(busy0, busy2, "{a:?}");
        let load = |q: RxqId| rxqs.iter().find(|r| r.0 == q).unwrap().1;
        assert_eq!(max_load(&a, load), 900);
        assert_eq!(
            max_load(&[vec![(0, 0), (2, 0)], vec![(1, 0), (3, 0)]], load),
            1700
        );
    }

    #[test]
    fn a_new_queue_goes_to_the_least_loaded_thread() {
        assert_eq!(least_loaded(&[(500, 1), (100, 3)]), 1);
        assert_eq!(least_loaded(&[(0, 2), (0, 1)]), 1);
        assert_eq!(least_loaded(&[(0, 1), (0, 1)]), 0);
    }
}
