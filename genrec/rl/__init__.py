"""genrec.rl"""
