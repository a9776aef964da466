"""genrec.serve: the trained models over HTTP.

api.py          the FastAPI app (routes, request schemas, errors, limits); Ray only in HandleBackend
recommender.py  RecommenderModel: checkpoint + catalog trie, constrained beam search for a batch
girl.py         JobGeneratorModel (CV -> JD) and JobMatcherModel (reward score, JobRecommender)
batching.py     Batcher: concurrent requests into one model call, the next batch formed when the model is free
deployments.py  the Ray Serve deployments (batching, autoscaling) and the app builders
launch.py       `genrec serve`: start Serve on host:port and run the app
"""
