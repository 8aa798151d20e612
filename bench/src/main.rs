fn main() {
    println!("hearth-bench: scenarios arrive with later issues");
}
