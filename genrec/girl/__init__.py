"""GIRL on genrec: CV/JD data, preference rows, the reward model and job recommendation."""
