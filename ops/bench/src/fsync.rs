//! `tsunagu-bench fsync`: what a batch's durable write costs in the message
//! journal, in a spare (a segment file filled with zeros and synced
//! beforehand: the batch overwrites blocks the file has) against the
//! baseline of appending to a growing file (what every segment was before).
//! Both run in this process, alternating, on the same file system, while a
//! second thread grows another file and fsyncs it every 50 ms as the
//! database's checkpoints do. One table: the fdatasync-inclusive write's
//! mean and tail quantiles, each with its ratio.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "tsunagu-bench fsync", about = "Journal batch write + fdatasync: a pre-zeroed spare segment against a growing file")]
struct Args {
    /// Writes per run (one batch each).
    #[arg(long, default_value_t = 1500)]
    writes: usize,
    /// Bytes per write (about 25 posts of 300-byte ciphertext).
    #[arg(long, default_value_t = 12_000)]
    bytes: usize,
    /// Runs of each kind, alternating.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory on the file system to measure (default: a temp dir in the current directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

pub fn main(argv: &[String]) -> i32 {
    let args = Args::parse_from(argv.iter().skip(1));
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tsunagu-bench fsync: {e:#}");
            1
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let tmp = tempfile::tempdir_in(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let dir = &tmp.path().canonicalize()?;
    let stop = AtomicBool::new(false);
    let (mut growing, mut spare) = (Vec::new(), Vec::new());
    std::thread::scope(|s| -> Result<()> {
        let checkpoints = s.spawn(|| checkpoints(&dir.join("db"), &stop));
        let measured = (0..args.runs).try_for_each(|run| {
            eprintln!("[fsync] run {}/{}", run + 1, args.runs);
            growing.extend(writes(args, &dir.join("growing.log"), false)?);
            spare.extend(writes(args, &dir.join("spare.log"), true)?);
            Ok::<_, anyhow::Error>(())
        });
        // Stopped on an error too: the scope waits for the thread.
        stop.store(true, Ordering::Relaxed);
        let background = checkpoints.join().expect("checkpoint thread");
        measured.and(background)
    })?;
    growing.sort_unstable();
    spare.sort_unstable();
    println!("command: tsunagu-bench fsync --writes {} --bytes {} --runs {} (in {})", args.writes, args.bytes, args.runs, dir.display());
    println!("{:<46} {:>14} {:>10} {:>7}", "write + fdatasync of one journal batch", "growing file", "spare", "ratio");
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    let q = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    for (name, base, new) in [
        ("mean", mean(&growing), mean(&spare)),
        ("p50", q(&growing, 0.5), q(&spare, 0.5)),
        ("p99", q(&growing, 0.99), q(&spare, 0.99)),
        ("p99.9", q(&growing, 0.999), q(&spare, 0.999)),
    ] {
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
        println!("{name:<46} {:>14} {:>10} {:>6.2}x", ms(base), ms(new), new.as_secs_f64() / base.as_secs_f64());
    }
    Ok(())
}

/// One run: `writes` batches at 1 ms intervals, each written at the end of
/// the last and fdatasynced; the file filled with zeros and synced first if
/// `zeroed`.
fn writes(args: &Args, path: &Path, zeroed: bool) -> Result<Vec<Duration>> {
    let mut file = File::create(path)?;
    if zeroed {
        let zeros = vec![0u8; 1 << 20];
        let mut left = args.writes * args.bytes;
        while left > 0 {
            let n = left.min(zeros.len());
            file.write_all(&zeros[..n])?;
            left -= n;
        }
        file.sync_all()?;
    }
    let batch = vec![0x5a; args.bytes];
    let mut took = Vec::with_capacity(args.writes);
    for i in 0..args.writes {
        let started = Instant::now();
        file.write_all_at(&batch, (i * args.bytes) as u64)?;
        file.sync_data()?;
        took.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(took)
}

/// The database's side: 256 KiB more every 50 ms, each fsynced.
fn checkpoints(path: &Path, stop: &AtomicBool) -> Result<()> {
    let mut file = File::create(path)?;
    let pages = vec![0x33; 256 << 10];
    while !stop.load(Ordering::Relaxed) {
        file.write_all(&pages)?;
        file.sync_all()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
