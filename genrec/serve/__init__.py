"""genrec.serve"""
