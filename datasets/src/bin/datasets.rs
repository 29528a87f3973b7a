//! `datasets`: show where a dataset is found and what it holds, or download it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datasets::{Resolver, registry};

#[derive(Parser)]
#[command(name = "datasets", version, about = "Find, inspect and download the toolkit's datasets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print where a dataset was found, its counts, image shape and class histogram.
    Info {
        /// Dataset name: fashion-mnist or mnist.
        #[arg(default_value = datasets::DEFAULT_DATASET)]
        name: String,
        /// Folder holding the dataset (overrides SPARSIFY_DATA and the search order).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Never download.
        #[arg(long)]
        offline: bool,
        /// Let the embedded subset (10,000 / 2,000 images) stand in when the full set is not found.
        #[arg(long)]
        allow_subset: bool,
    },
    /// Download a dataset into the cache (or DIR), verifying checksums.
    Fetch {
        /// Dataset name: fashion-mnist or mnist.
        #[arg(default_value = datasets::DEFAULT_DATASET)]
        name: String,
        /// Folder to download into (default: the user's cache, ~/.cache/sparsify/NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { name, data, offline, allow_subset } => {
            let mut resolver = Resolver::new(data, false).allowing_subset(allow_subset);
            resolver.download &= !offline;
            let d = resolver.load(&name)?;
            let spec = registry::spec(&name)?;
            println!("dataset:  {}", d.name);
            println!("source:   {}", d.source);
            println!("train:    {} images", d.train.len());
            println!("test:     {} images", d.test.len());
            println!("shape:    {}x{}", d.train.rows, d.train.cols);
            println!("classes:  {}", d.num_classes);
            println!("{:<14} {:>7} {:>7}", "class", "train", "test");
            for (c, (tr, te)) in d.train.histogram(d.num_classes).iter().zip(d.test.histogram(d.num_classes)).enumerate() {
                println!("{:<14} {tr:>7} {te:>7}", spec.class_names[c]);
            }
        }
        Command::Fetch { name, dir, quiet } => {
            let resolver = Resolver::new(None, quiet);
            let spec = registry::spec(&name)?;
            let dir = match dir {
                Some(d) => d,
                None => resolver.cache.clone().context("this platform has no cache folder; pass --dir")?.join(&name),
            };
            resolver.fetch_into(&spec, &dir)?;
            let d = datasets::resolve::load_dir(&spec, &dir, "fetched")?;
            println!("{name}: {} training and {} test images in {}", d.train.len(), d.test.len(), dir.display());
        }
    }
    Ok(())
}
