//! Prints what handing over a history of N posts costs on the client, without
//! the network (build, seal, open, import; `core::history::handover_costs`),
//! as JSON:  cargo run --release -p tsunagu-client --example history_costs -- [N]
fn main() {
    let posts = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let start = std::time::Instant::now();
    let clock = move || start.elapsed().as_secs_f64() * 1000.0;
    match tsunagu_client::core::history::handover_costs(posts, &clock) {
        Ok(c) => println!("{}", serde_json::to_string(&c).expect("json")),
        Err(e) => {
            eprintln!("history_costs: {e}");
            std::process::exit(1);
        }
    }
}
