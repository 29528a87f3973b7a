//! Top-1 predictions from logits: the one argmax and the one count of correct predictions that
//! `engine eval`, `sparsify`'s training and one-shot passes and the experiments all use.

/// Index of the largest value in each row of `classes` values (the last of equal ones, as
/// `Iterator::max_by` picks; NaN above every number, as `f32::total_cmp` orders it).
pub fn argmax(values: &[f32], classes: usize) -> Vec<usize> {
    values.chunks(classes.max(1)).map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)).collect()
}

/// How many of the rows of `logits` (`classes` values each) have their largest value at their
/// label.
pub fn correct(logits: &[f32], classes: usize, labels: &[u8]) -> usize {
    argmax(logits, classes).iter().zip(labels).filter(|(p, l)| **p == **l as usize).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pick_their_largest_value_and_count_against_labels() {
        let logits = [0.1, 0.7, 0.2, 3.0, -1.0, 3.0, 0.0, 0.0, -0.5];
        assert_eq!(argmax(&logits, 3), vec![1, 2, 1]);
        assert_eq!(correct(&logits, 3, &[1, 0, 1]), 2);
        assert_eq!(argmax(&[], 3), Vec::<usize>::new());
    }
}
