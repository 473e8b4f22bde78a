"""The model and its loss: the Hugging Face model wrapper, the weighted loss and the loss per
role, the LM head, `torch_varlen` attention, LoRA, wrapping (DDP/FSDP, compile) and the start-up
checks of the speed paths."""
