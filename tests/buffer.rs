//! The replay buffer: sub-trajectories are contiguous slices of one stored episode, laid out
//! time-major; starts are uniform over every valid (episode, start); planner Gaussians are
//! carried (NaN replaced by mean 0, std 1); the oldest episodes are evicted beyond the
//! capacity; bad input is an error. Pure CPU.

use pompc::train::ReplayBuffer;
use rand::SeedableRng;

const O: usize = 3;
const A: usize = 2;

/// Values that name their episode, step and component.
fn obs(e: usize, t: usize) -> Vec<f32> {
    (0..O).map(|i| (e * 10000 + t * 10 + i) as f32).collect()
}
fn act(e: usize, t: usize) -> Vec<f32> {
    (0..A).map(|i| -((e * 10000 + t * 10 + i) as f32)).collect()
}

fn fill(buf: &mut ReplayBuffer, episode: usize, len: usize, with_planner: bool) {
    buf.start(&obs(episode, 0)).unwrap();
    for t in 0..len {
        let p: Vec<f32> = (0..2 * A)
            .map(|i| (episode * 100 + t) as f32 + i as f32 * 0.25)
            .collect();
        buf.push(
            &act(episode, t),
            (episode * 1000 + t) as f32,
            &obs(episode, t + 1),
            with_planner.then_some(&p[..]),
        )
        .unwrap();
    }
    buf.finish().unwrap();
}

#[test]
fn samples_are_contiguous_time_major_slices() {
    let mut buf = ReplayBuffer::new(O, A, 10_000).unwrap();
    fill(&mut buf, 0, 20, true);
    fill(&mut buf, 1, 7, false);
    fill(&mut buf, 2, 2, true); // too short for horizon 3: never sampled
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    let (b, t) = (64, 3);
    let s = buf.sample(&mut r, b, t).unwrap();
    assert_eq!(s.batch.obs.len(), (t + 1) * b * O);
    for (j, &(e, start)) in s.origin.iter().enumerate() {
        assert!(e < 2, "an episode shorter than the horizon was sampled");
        for step in 0..=t {
            assert_eq!(
                &s.batch.obs[(step * b + j) * O..][..O],
                &obs(e, start + step)[..]
            );
        }
        for step in 0..t {
            assert_eq!(
                &s.batch.action[(step * b + j) * A..][..A],
                &act(e, start + step)[..]
            );
            assert_eq!(
                s.batch.reward[step * b + j],
                (e * 1000 + start + step) as f32
            );
            let p = &s.planner[(step * b + j) * 2 * A..][..2 * A];
            if e == 0 {
                assert_eq!(p[0], (start + step) as f32);
                assert_eq!(p[3], (start + step) as f32 + 0.75);
            } else {
                assert_eq!(p, &[0.0, 0.0, 1.0, 1.0]);
            }
        }
    }
}

#[test]
fn starts_are_uniform_over_valid_positions() {
    let mut buf = ReplayBuffer::new(O, A, 10_000).unwrap();
    fill(&mut buf, 0, 10, false); // 8 starts at horizon 3
    fill(&mut buf, 1, 4, false); // 2 starts
    let mut r = rand::rngs::StdRng::seed_from_u64(2);
    let mut count = [[0usize; 8]; 2];
    let n = 20_000;
    let s = buf.sample(&mut r, n, 3).unwrap();
    for &(e, start) in &s.origin {
        count[e][start] += 1;
    }
    // 10 valid (episode, start) pairs, n / 10 each; 5 sigma of a binomial(n, 0.1) is 212.
    for (e, starts) in [(0, 8), (1, 2)] {
        for c in &count[e][..starts] {
            assert!((*c as f64 - n as f64 / 10.0).abs() < 212.0, "{count:?}");
        }
    }
}

#[test]
fn capacity_evicts_the_oldest_and_bad_input_is_an_error() {
    let mut buf = ReplayBuffer::new(O, A, 25).unwrap();
    for e in 0..4 {
        fill(&mut buf, e, 10, false);
    }
    assert_eq!((buf.len(), buf.episodes(), buf.evicted()), (20, 2, 2));
    let mut r = rand::rngs::StdRng::seed_from_u64(3);
    let s = buf.sample(&mut r, 50, 3).unwrap();
    // Episodes 2 and 3 remain, at buffer indices 0 and 1.
    for (j, &(e, start)) in s.origin.iter().enumerate() {
        assert_eq!(&s.batch.obs[j * O..][..O], &obs(e + 2, start)[..]);
    }
    assert!(ReplayBuffer::new(0, A, 10).is_err());
    assert!(
        buf.push(&[0.0; A], 0.0, &[0.0; O], None).is_err(),
        "push before start"
    );
    buf.start(&[0.0; O]).unwrap();
    assert!(buf.push(&[0.0; A + 1], 0.0, &[0.0; O], None).is_err());
    assert!(buf.push(&[0.0; A], 0.0, &[0.0; O - 1], None).is_err());
    assert!(
        buf.push(&[0.0; A], 0.0, &[0.0; O], Some(&[0.0; 3]))
            .is_err()
    );
    assert!(buf.sample(&mut r, 4, 11).is_err(), "no episode of 11 steps");
    assert!(buf.sample(&mut r, 0, 3).is_err());
    let empty = ReplayBuffer::new(O, A, 10).unwrap();
    assert!(empty.sample(&mut r, 4, 3).is_err());
}

#[test]
fn export_import_and_planner_rewrites() {
    let mut buf = ReplayBuffer::new(3, 2, 1000).unwrap();
    fill(&mut buf, 0, 5, false);
    fill(&mut buf, 1, 4, true);
    let d = buf.export();
    assert_eq!(d.lengths, vec![5, 4]);
    assert_eq!(d.obs.len(), (5 + 1 + 4 + 1) * 3);
    let mut copy = ReplayBuffer::new(3, 2, 1000).unwrap();
    copy.import(&d).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let e = copy.export();
    assert_eq!(bits(&e.planner), bits(&d.planner));
    assert_eq!(
        (e.obs, e.action, e.reward),
        (d.obs.clone(), d.action.clone(), d.reward.clone())
    );
    // Reanalysis writes a Gaussian back; bad indices and lengths are errors.
    copy.set_planner(0, 4, &[0.1, 0.2, 0.3, 0.4]).unwrap();
    assert_eq!(copy.export().planner[4 * 4..5 * 4], [0.1, 0.2, 0.3, 0.4]);
    assert!(copy.set_planner(0, 5, &[0.0; 4]).is_err());
    assert!(copy.set_planner(2, 0, &[0.0; 4]).is_err());
    assert!(copy.set_planner(0, 0, &[0.0; 3]).is_err());
    let mut short = d.clone();
    short.reward.pop();
    assert!(
        ReplayBuffer::new(3, 2, 1000)
            .unwrap()
            .import(&short)
            .is_err()
    );
}
