//! A mutation fuzzer for recipes on stable Rust: the shipped recipes are the seeds; mutants
//! replace a number with a value at an edge (0, negative, huge, 2^32, 2^64, 1e308, inf, nan),
//! nest expressions deeply, or flip, cut and splice bytes. Each is parsed and, where it parses,
//! checked against its model (`recipe check`); a panic, stack overflow, hang or allocation over
//! 4 GiB fails the test (it ends the process, naming the mutant, for the last three).
//! `FUZZ_MUTANTS` per seed (default 150) and `FUZZ_SEED` as in the engine's `tests/fuzz.rs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sparsify::recipe::Recipe;
use sparsify::targets::check_params;

/// Any single allocation over 4 GiB is refused, which aborts the test where the caller cannot
/// handle it: the allocation the acceptance criterion forbids.
struct Capped;
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > 4 << 30 { std::ptr::null_mut() } else { unsafe { System.alloc(layout) } }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > 4 << 30 { std::ptr::null_mut() } else { unsafe { System.realloc(ptr, layout, new_size) } }
    }
}
#[global_allocator]
static ALLOCATOR: Capped = Capped;

const EDGES: [&str; 16] = [
    "0",
    "-1",
    "1",
    "0.5",
    "1.5",
    "-0.5",
    "1e12",
    "1e308",
    "-1e308",
    "4294967296",
    "18446744073709551616",
    "inf",
    "nan",
    "1e-320",
    "65536",
    "2147483648",
];

fn mutate(rng: &mut StdRng, text: &str) -> String {
    match rng.random_range(0..4) {
        // A number token replaced by an edge value (or an expression of it).
        0 | 1 => {
            let spans: Vec<(usize, usize)> = number_spans(text);
            let Some(&(a, b)) = spans.get(rng.random_range(0..spans.len().max(1))) else { return text.to_string() };
            let v = EDGES[rng.random_range(0..EDGES.len())];
            format!("{}{v}{}", &text[..a], &text[b..])
        }
        // A number replaced by a deeply nested expression.
        2 => {
            let spans = number_spans(text);
            let Some(&(a, b)) = spans.get(rng.random_range(0..spans.len().max(1))) else { return text.to_string() };
            let n = [10, 63, 64, 65, 1000, 100_000][rng.random_range(0..6)];
            let wrap = if rng.random_bool(0.5) { "(".repeat(n) + "1" + &")".repeat(n) } else { "- ".repeat(n) + "1" };
            format!("{}\"{wrap}\"{}", &text[..a], &text[b..])
        }
        _ => {
            let mut b = text.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..4) {
                if b.is_empty() {
                    break;
                }
                let at = rng.random_range(0..b.len());
                match rng.random_range(0..3) {
                    0 => b[at] = b" =[]{}\"'0-9.\n#"[rng.random_range(0..14)],
                    1 => b.truncate(at),
                    _ => {
                        let end = (at + rng.random_range(1..40)).min(b.len());
                        let chunk = b[at..end].to_vec();
                        b.splice(at..at, chunk);
                    }
                }
            }
            String::from_utf8_lossy(&b).into_owned()
        }
    }
}

/// Byte ranges of the numbers in `text` (digits with a sign, point or exponent).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric() && bytes[i - 1] != b'_') {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'e' | b'E')) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

#[test]
fn recipe_mutants_are_refused_or_checked() {
    let per_seed = std::env::var("FUZZ_MUTANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(150u64);
    let campaign = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1u64);
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut seeds: Vec<_> =
        std::fs::read_dir(&recipes).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    seeds.sort();
    assert!(seeds.len() >= 11, "the shipped recipes are the seeds");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mutant.toml");
    let failures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    std::fs::create_dir_all(&failures).unwrap();
    std::panic::set_hook(Box::new(|_| {}));
    let (mut parsed, mut bad) = (0, Vec::new());
    for (s, seed) in seeds.iter().enumerate() {
        let text = std::fs::read_to_string(seed).unwrap();
        let mut rng = StdRng::seed_from_u64(campaign.wrapping_mul(7919) ^ s as u64);
        for i in 0..per_seed {
            let mutant = mutate(&mut rng, &text);
            std::fs::write(&file, &mutant).unwrap();
            let name = format!("{}.{campaign}.{i}", seed.file_name().unwrap().to_string_lossy());
            // A thread with a small stack: deep recursion shows as an overflow here, not only
            // on the main thread's 8 MB.
            let f = file.clone();
            let outcome = std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let Ok(r) = Recipe::load(&f, &[]) else { return false };
                    let _ = check_params(&r, &f.display().to_string());
                    let _ = r.to_toml();
                    true
                })
                .unwrap()
                .join();
            match outcome {
                Ok(ok) => parsed += ok as usize,
                Err(_) => {
                    std::fs::write(failures.join(&name), &mutant).unwrap();
                    bad.push(name);
                }
            }
        }
    }
    let _ = std::panic::take_hook();
    eprintln!(
        "recipe fuzz: {} mutants of {} recipes (campaign {campaign}), {parsed} parsed, {} panicked",
        per_seed as usize * seeds.len(),
        seeds.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "mutants panicked (saved under target/fuzz-failures): {bad:?}");
    assert!(parsed > 0, "no mutant parsed: the fuzzer is not reaching the checks");
}
