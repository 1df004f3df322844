//! Prints the CounterCluster CRD (`make crd` writes it to deploy/crds/).
fn main() {
    print!("{}", tally_operator::crd::crd_yaml());
}
