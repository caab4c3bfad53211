//! Tests of the model's structure and gradients (numerical parity with the official code is tested from Python
//! against golden files, see tests/test_parity.py).

use candle_core::{DType, Device, Tensor};

use crate::config::*;
use crate::model::LatteModel;

fn counts(classes: usize) -> Vec<usize> {
    ["S", "B", "L", "XL"]
        .iter()
        .map(|s| {
            let cfg = LatteConfig { num_classes: classes, ..LatteConfig::preset(&format!("Latte-{s}/2")).unwrap() };
            cfg.num_parameters(true).unwrap()
        })
        .collect()
}

#[test]
fn preset_parameter_counts_equal_the_official_implementation() {
    assert_eq!(counts(0), [32_480_672, 129_547_040, 456_815_648, 673_681_568]);
    assert_eq!(counts(101), [32_519_840, 129_625_376, 456_920_096, 673_799_072]);
}
