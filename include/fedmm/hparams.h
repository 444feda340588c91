/* Hyper-parameter structs shared by the public op API and the CPU/CUDA backends. */
#ifndef FEDMM_HPARAMS_H
#define FEDMM_HPARAMS_H

/* AdamW hyper-parameters (decoupled weight decay, bias-corrected moments). */
typedef struct fm_adamw_hparams {
    float lr, beta1, beta2, eps, weight_decay;
} fm_adamw_hparams;

#endif
