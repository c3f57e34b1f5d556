"""FENRec's loss terms, one idea per module.

- soft_labels: time-dependent soft-label cross-entropy (L_rec)
- shaping: similarity shaping of contrastive logits
- hard_negatives: enduring hard negatives in closed form from the Gram matrix
- noise_negatives: Gaussian negatives nudged by gradient ascent
- intent_contrast: weighted InfoNCE in log space; coarse and fine intent contrast
- fenrec: the combination L_rec + lambda_0 L_coarse + beta_0 L_fine with the warm-up schedule
"""
