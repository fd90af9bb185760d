fn main() {
    eprintln!("raft-kv: not built yet (issue 6)");
}
