# -*- coding: utf-8 -*-
'''
    image statistics for the legacy_style fixture app; imported by eval.py through the evals package
    (from evals.legacy_style.stats import ...), the way old apps import their sibling modules
'''


def image_stats(img):
    '''
        height, width and mean B, G, R of a BGR image
    '''
    height, width = img.shape[:2]
    means = img.reshape(-1, 3).mean(axis=0)
    return {
        "height": int(height),
        "width": int(width),
        "mean_bgr": [round(float(v), 3) for v in means],
    }


def pick_label(synset, mean_bgr):
    '''
        a synset row chosen deterministically from the mean colour
    '''
    return synset[int(sum(mean_bgr)) % len(synset)]
