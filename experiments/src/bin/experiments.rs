//! `experiments`: run sweeps, plan them for a cluster, and collect their results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use experiments::peers::Peers;
use experiments::plan::{self, Plan};
use experiments::sweep::Sweep;
use experiments::{collect, point};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "experiments", version, about = "Sweeps of sparsify + engine: accuracy against measured speedup")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// A Slurm job-array script, one task per point.
    Slurm,
    /// One command per line (for GNU parallel or xargs).
    Shell,
}

/// Where points read data from, write results to, and which peers time them.
#[derive(Args)]
struct PointArgs {
    /// Folder holding the dataset (else the standard search order).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Let the embedded subset (10,000 / 2,000 images) stand in when the full set is not found;
    /// the results say so (`data_source`).
    #[arg(long)]
    allow_subset: bool,
    /// Where results go (default ./results).
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// A Python with onnxruntime (and optionally deepsparse) to time the ONNX exports too.
    #[arg(long)]
    peers_python: Option<PathBuf>,
    /// Measure finished points again (export, accuracy, timings) with this build of the engine;
    /// their trainings are reused.
    #[arg(long)]
    rebench: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run every point of a sweep (reusing finished ones), then write the table, plots and report.
    Run {
        /// Sweep file (TOML), such as experiments/quick.toml.
        sweep: PathBuf,
        #[command(flatten)]
        point: PointArgs,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run one point (by id, see `plan`) into the shared results folder.
    RunPoint {
        /// Sweep file (TOML), such as experiments/quick.toml.
        sweep: PathBuf,
        /// Point id, as `experiments plan` lists them.
        id: String,
        #[command(flatten)]
        point: PointArgs,
    },
    /// Print the jobs of a sweep, one per point, for a cluster or GNU parallel: absolute paths,
    /// one staged binary, logs in the results folder.
    Plan {
        /// Sweep file (TOML), such as experiments/quick.toml.
        sweep: PathBuf,
        /// What to write: a Slurm job-array script or one command per line.
        #[arg(long, value_enum, default_value_t = Emit::Shell)]
        emit: Emit,
        /// The binary the jobs run (else this one, copied into the results folder so that a
        /// rebuild during the sweep does not change it).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// With `--emit slurm`: a script to run with bash that submits the array and a collect
        /// job after it (`afterany`), instead of the array script for sbatch.
        #[arg(long)]
        with_collect: bool,
        /// Passed to every point (`--results` is the shared results folder).
        #[command(flatten)]
        point: PointArgs,
    },
    /// Build the table, plots and report from the points finished so far.
    Collect {
        /// Sweep file (TOML), such as experiments/quick.toml.
        sweep: PathBuf,
        /// The results folder the points were written to.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Write the table and plots of the finished points even if some are missing (which
        /// is otherwise an error, naming them).
        #[arg(long)]
        partial: bool,
    },
}

fn main() -> ExitCode {
    datasets::cli::exit_quietly_on_broken_pipe();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn peers(python: Option<PathBuf>, quiet: bool) -> anyhow::Result<Option<Peers>> {
    match python {
        Some(p) => Ok(Some(Peers::new(p)?)),
        None => {
            if !quiet {
                eprintln!("note: no --peers-python given; skipping ONNX Runtime and DeepSparse timings");
            }
            Ok(None)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { sweep: file, point: PointArgs { data, allow_subset, results, peers_python, rebench }, quiet } => {
            let sweep = Sweep::load(&file)?;
            let peers = peers(peers_python, quiet)?;
            let dir = sweep.dir(&results);
            let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(sweep.points.len() as u64) };
            bar.set_style(
                ProgressStyle::with_template("sweep {prefix} [{bar:30}] {pos}/{len} points {msg} ({elapsed})")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(sweep.name.clone());
            for p in &sweep.points {
                bar.set_message(p.label());
                let r = point::run_point(&sweep, &dir, p, (data.clone(), allow_subset || sweep.allow_subset), peers.as_ref(), rebench)?;
                bar.inc(1);
                let line = format!(
                    "{}: top-1 {:.2}%, sparsity {:.1}%, speedup {}",
                    p.label(),
                    100.0 * r.top1,
                    100.0 * r.measured_sparsity,
                    r.timings.iter().map(|t| format!("{:.2}x at b={}", t.speedup, t.batch)).collect::<Vec<_>>().join(", ")
                );
                if !quiet {
                    bar.suspend(|| eprintln!("{line}"));
                }
            }
            bar.finish_and_clear();
            let n = collect(&sweep, &file.display().to_string(), &results, false)?;
            println!("{n} points: {}", dir.join("report.md").display());
        }
        Command::RunPoint { sweep: file, id, point: PointArgs { data, allow_subset, results, peers_python, rebench } } => {
            let sweep = Sweep::load(&file)?;
            let Some(p) = sweep.points.iter().find(|p| p.id == id) else {
                bail!("{}: no point with id {id} (see `experiments plan`)", file.display());
            };
            // A requeued or restarted task says where it picks up (in its log).
            let run_dir = point::point_dir(&sweep.dir(&results), p).join("run");
            if let Some((epoch, _)) =
                sparsify::run::latest_checkpoint(&run_dir).filter(|_| point::finished(&sweep.dir(&results), p).is_none())
            {
                eprintln!("{}: resuming its training after epoch {epoch} ({})", p.label(), run_dir.display());
            }
            let r = point::run_point(
                &sweep,
                &sweep.dir(&results),
                p,
                (data, allow_subset || sweep.allow_subset),
                peers(peers_python, true)?.as_ref(),
                rebench,
            )?;
            println!("{}: top-1 {:.4}", p.label(), r.top1);
        }
        Command::Plan { sweep: file, emit, bin, with_collect, point: PointArgs { data, allow_subset, results, peers_python, rebench } } => {
            let sweep = Sweep::load(&file)?;
            if with_collect && !matches!(emit, Emit::Slurm) {
                bail!("--with-collect goes with --emit slurm");
            }
            let bin = match bin {
                Some(b) => b,
                None => plan::stage_binary(&std::env::current_exe()?, &sweep.dir(&results))?,
            };
            let cwd = std::env::current_dir()?;
            let mut args = Vec::new();
            for (flag, path) in [("--data", data), ("--peers-python", peers_python)] {
                if let Some(path) = path {
                    args.extend([flag.to_string(), cwd.join(path).display().to_string()]);
                }
            }
            args.extend(allow_subset.then(|| "--allow-subset".to_string()));
            args.extend(rebench.then(|| "--rebench".to_string()));
            let plan = Plan::new(&bin, &file, &results, args, &sweep)?;
            let out = match emit {
                Emit::Shell => plan.shell(&sweep),
                Emit::Slurm if with_collect => plan.slurm_with_collect(&sweep),
                Emit::Slurm => plan.slurm_array(&sweep),
            };
            // A reader that stops early (`| head`) is not an error.
            if let Err(e) = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e.into());
            }
        }
        Command::Collect { sweep: file, results, partial } => {
            let sweep = Sweep::load(&file)?;
            let n = collect(&sweep, &file.display().to_string(), &results, partial)?;
            println!("{n} of {} points collected into {}", sweep.points.len(), sweep.dir(&results).display());
        }
    }
    Ok(())
}
