"""genrec.rec"""
