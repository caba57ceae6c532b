"""Autoregressive priors over image tokens: the token <-> LM vocabulary, logits processor, GPT-2 config and sampling
(`language_model`), and token data sets built with a tokenizer (`token_data`)."""
