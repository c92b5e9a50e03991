"""Knowledge distillation (Hinton et al.), as TAS retrains a pruned network from the unpruned one.

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor keeps the soft term's gradient scale independent of the temperature. TAS's defaults are
alpha 0.9 and T 4. (TAS's paper, Eq. 9, writes the cross-entropy with its arguments swapped; the author
confirmed the code's form, which is this one.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 alpha: float = 0.9, T: float = 4.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """The KD loss, averaged over the batch; `teacher_logits` get no gradient."""
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return ce
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / T, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * (T * T) * kl
