"""The training layer: traces into TRL rows, logit-KD settings, losses and the KD trainer."""
