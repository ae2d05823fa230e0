"""Learning: featurizers, models, the uncertainty measures, strategies and selection, the feature stores."""
