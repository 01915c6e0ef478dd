//! Train PO-MPC on pendulum swing-up with the quick preset (`TrainConfig::quick`: tiny model,
//! 64 samples, 3 iterations, batches of 32) and write the learning curve to
//! `train_pendulum.svg`.
//!
//! `cargo run --release --example train_pendulum -- [steps] [method] [lambda]`
//! (default 4000 steps, po-mpc, lambda 1). `pompc train` is the full command-line trainer.

use pompc::train::{Event, Method, TrainConfig, Trainer};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = args.first().map_or(Ok(4000), |s| s.parse())?;
    let lambda = args.get(2).map(|s| s.parse::<f32>()).transpose()?;
    let method = Method::parse(args.get(1).map_or("po-mpc", |s| s.as_str()), lambda)?;
    let gpu = pompc::Gpu::new(Default::default())?;
    println!("{}", gpu.describe());
    let env = pompc::env::make("pendulum-swingup")?;
    let cfg = TrainConfig::quick(env.as_ref(), method, steps, 0)?;
    let eval_env = pompc::env::make("pendulum-swingup")?;
    let mut trainer = Trainer::new(&gpu, env, eval_env, cfg)?;
    let t0 = Instant::now();
    trainer.run(steps, &mut |e: &Event| {
        let t = t0.elapsed().as_secs_f64();
        match e {
            Event::Episode { step, episode, ret } => println!(
                "{t:7.1} s  step {step:6}  episode {episode:3}  return {ret:6.1}  ({:.0} steps/s)",
                *step as f64 / t
            ),
            Event::Eval { step, mean, .. } => println!("{t:7.1} s  step {step:6}  eval {mean:6.1}"),
            Event::Pretraining { updates, total, .. } => {
                println!("{t:7.1} s  pre-training: {updates} of {total} updates")
            }
            Event::Pretrained { updates, seconds } => {
                println!("{t:7.1} s  {updates} pre-training updates in {seconds:.1} s")
            }
            Event::Losses {
                step,
                world,
                policy,
                ..
            } => println!(
                "{t:7.1} s  step {step:6}  consistency {:.4} reward {:.4} value {:.4} pi {:.4}",
                world.consistency,
                world.reward,
                world.value,
                policy.map_or(f32::NAN, |p| p.total)
            ),
        }
        Ok(())
    })?;
    let chart = trainer.curve(&format!("pendulum-swingup, {}", method.label()));
    std::fs::write("train_pendulum.svg", chart.to_svg())?;
    println!("learning curve: train_pendulum.svg");
    Ok(())
}
