"""genrec.models"""
