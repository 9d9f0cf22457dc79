//! Prints the client core's native MLS costs as JSON (`bench::mls_costs`),
//! for `ops/bench-web/`, which compares them with the same code in the
//! browser:  cargo run --release -p tsunagu-client --example mls_costs -- [REPS]
fn main() {
    let reps = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let start = std::time::Instant::now();
    let clock = move || start.elapsed().as_secs_f64() * 1000.0;
    match tsunagu_client::bench::mls_costs(reps, &clock) {
        Ok(c) => println!("{}", serde_json::to_string(&c).expect("json")),
        Err(e) => {
            eprintln!("mls_costs: {e}");
            std::process::exit(1);
        }
    }
}
