from .dictionary import ClassDictionary, Category, load_dictionary

__all__ = ["ClassDictionary", "Category", "load_dictionary"]
