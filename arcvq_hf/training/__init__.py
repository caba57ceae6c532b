"""Training: `ArcVQTrainer` and the schedule callback (`trainer`), the VQGAN recipe (`gan`), model cards written from
measured metrics (`model_card`, `model_card_text`) and the Hub upload (`publish`)."""
