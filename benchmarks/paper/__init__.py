"""The paper's four supervised benchmarks, one command each.

    python -m benchmarks.paper {nyuv2,cityscapes,celeba,qm9} --data DIR \\
        --method NAME [--alpha A] [--seed S] --out DIR [--resume] \\
        [--profile] [--epochs N]

Ban & Ji's Tables 1–3 and 8 (NYU-v2, Cityscapes, CelebA, QM9) come from the
authors' PyTorch code (github.com/OptMN-Lab/fairgrad, built on Nash-MTL's and
FAMO's experiment code). This package reruns them with fairgrad_jax's
aggregators and flax models under the same protocol (:mod:`.protocols`:
optimiser, learning rate and schedule, batch size, epochs, target scaling,
metrics, model selection, and each method's hyperparameters, scaling and
clipping), checkpoints every epoch with orbax (:mod:`.checkpoint`;
``--resume`` continues bit-identically), logs every epoch to ``log.jsonl``
and prints the paper's table with our row beside the printed ones
(:mod:`.report`). ``--profile`` times the training step at the real sizes on
synthetic tensors (:mod:`.profile`).
"""
