"""Character-level BiRNN tagger for Chinese segmentation, POS and NER."""
