"""The method: top-k masks with a straight-through estimator (`masking`), the frozen random weights and score inits
(`initializers`), the masked layers (`layers`, with the slotted BatchNorm of `ticket_batch_norm`), a ticket's record
(`ticket`) and the masked twin of any Keras model (`twin`)."""
