"""internvqa_jax: compressed-video quality assessment with InternVideo2 teachers and distilled students."""
