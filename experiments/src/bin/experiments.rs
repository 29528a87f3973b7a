//! `experiments`: run sweeps, plan them for a cluster, and collect their results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use experiments::peers::Peers;
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
    /// Print the jobs of a sweep, one per point, for a cluster or GNU parallel.
    Plan {
        /// Sweep file (TOML), such as experiments/quick.toml.
        sweep: PathBuf,
        /// What to write: a Slurm job-array script or one command per line.
        #[arg(long, value_enum, default_value_t = Emit::Shell)]
        emit: Emit,
        /// The shared results folder the jobs write to.
        #[arg(long, default_value = "results")]
        results: PathBuf,
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
        Command::Plan { sweep: file, emit, results } => {
            let sweep = Sweep::load(&file)?;
            let exe = std::env::current_exe()?;
            let cmd = |id: &str| format!("{} run-point {} {id} --results {}", exe.display(), file.display(), results.display());
            let mut out = String::new();
            match emit {
                Emit::Shell => sweep.points.iter().for_each(|p| out += &format!("{}\n", cmd(&p.id))),
                Emit::Slurm => {
                    out += &format!(
                        "#!/bin/bash\n#SBATCH --job-name={}\n#SBATCH --array=0-{}\n#SBATCH --cpus-per-task=2\n",
                        sweep.name,
                        sweep.points.len() - 1
                    );
                    out += &format!(
                        "# After the array finishes: {} collect {} --results {}\n",
                        exe.display(),
                        file.display(),
                        results.display()
                    );
                    out += &format!("ids=({})\n", sweep.points.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(" "));
                    out += &format!("{}\n", cmd("${ids[$SLURM_ARRAY_TASK_ID]}"));
                }
            }
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
