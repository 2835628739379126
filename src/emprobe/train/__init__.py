"""Training: LoRA / full fine-tuning with training-time interventions (CAFT, steering, GRASP),
regularisers, refusal unlearning and monitoring.

May import ``emprobe.models``, ``emprobe.hooks`` and ``emprobe.data``.
"""
