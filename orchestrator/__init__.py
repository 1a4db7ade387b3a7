"""Experiment orchestrator for few-shot image generation: CLI, data, evaluation, Ray, MLflow."""
