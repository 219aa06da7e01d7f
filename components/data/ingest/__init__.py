"""Bring an existing dataset or a real data set (Taobao, MovieLens, catalog CSV) into the contract."""
