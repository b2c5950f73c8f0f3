fn main() {
    match lockd::dataplane::Dataplane::load() {
        Ok(_) => println!("loaded"),
        Err(e) => {
            let mut s: &dyn std::error::Error = &e;
            println!("{s}");
            while let Some(n) = s.source() { println!("  {n}"); s = n; }
        }
    }
}
